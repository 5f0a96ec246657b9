//! The state of one `Subscribe` stream, without I/O: which subscription and consumer it
//! serves and how many events the client still takes (its credits). The tokio shell in
//! [`super::service`] feeds it the client's requests and the events it handed out, and
//! asks it how many to pull next.

use meshd_proto::v1::SubscribeRequest;

/// Most credits a stream holds at once (more are capped: a client cannot make the node
/// lease more than this ahead of its acks).
pub const MAX_CREDITS: u64 = 10_000;
/// Most events handed out by one pull of the stream.
pub const MAX_PER_PULL: u64 = 1_000;

/// Why a request does not fit the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The first request did not name a subscription.
    #[error("the first Subscribe request must name the subscription")]
    NoSubscription,
    /// A later request named another subscription or consumer.
    #[error(
        "{field} is fixed by the first request of the stream ({first:?}); this one says {now:?}"
    )]
    Changed {
        /// `subscription` or `consumer`.
        field: &'static str,
        /// What the first request said.
        first: String,
        /// What this one says.
        now: String,
    },
}

impl SessionError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            SessionError::NoSubscription => "subscription",
            SessionError::Changed { field, .. } => field,
        }
    }
}

/// One stream's subscription, consumer and credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    subscription: String,
    consumer: String,
    credits: u64,
}

impl Session {
    /// Starts a stream from its first request (its credits and acks are then taken with
    /// [`Session::on_request`]).
    pub fn start(first: &SubscribeRequest) -> Result<Session, SessionError> {
        if first.subscription.is_empty() {
            return Err(SessionError::NoSubscription);
        }
        Ok(Session {
            subscription: first.subscription.clone(),
            consumer: consumer_of(&first.consumer).to_string(),
            credits: 0,
        })
    }

    /// The subscription served.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The consumer id (`default` when the client gave none).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Takes a request's credits; returns its ack ids (for the shell to acknowledge).
    /// A later request may repeat the subscription and consumer but not change them.
    pub fn on_request(&mut self, req: SubscribeRequest) -> Result<Vec<String>, SessionError> {
        if !req.subscription.is_empty() && req.subscription != self.subscription {
            return Err(SessionError::Changed {
                field: "subscription",
                first: self.subscription.clone(),
                now: req.subscription,
            });
        }
        if !req.consumer.is_empty() && req.consumer != self.consumer {
            return Err(SessionError::Changed {
                field: "consumer",
                first: self.consumer.clone(),
                now: req.consumer,
            });
        }
        self.credits = (self.credits + u64::from(req.credits)).min(MAX_CREDITS);
        Ok(req.ack_ids)
    }

    /// How many events to pull now (0: wait for credits).
    pub fn want(&self) -> usize {
        self.credits.min(MAX_PER_PULL) as usize
    }

    /// Counts events handed out to the client.
    pub fn handed_out(&mut self, n: usize) {
        self.credits = self.credits.saturating_sub(n as u64);
    }
}

fn consumer_of(consumer: &str) -> &str {
    if consumer.is_empty() {
        "default"
    } else {
        consumer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(sub: &str, credits: u32, acks: &[&str]) -> SubscribeRequest {
        SubscribeRequest {
            subscription: sub.into(),
            consumer: String::new(),
            credits,
            ack_ids: acks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn credits_add_up_are_spent_and_capped() {
        let first = req("audit", 3, &[]);
        let mut s = Session::start(&first).unwrap();
        assert_eq!(s.consumer(), "default");
        assert_eq!(s.want(), 0, "credits count from on_request only");
        assert_eq!(s.on_request(first).unwrap(), Vec::<String>::new());
        assert_eq!(s.want(), 3);
        s.handed_out(2);
        assert_eq!(s.want(), 1);
        assert_eq!(
            s.on_request(req("", 5, &["a", "b"])).unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(s.want(), 6);
        s.handed_out(10);
        assert_eq!(s.want(), 0);
        s.on_request(req("", u32::MAX, &[])).unwrap();
        assert_eq!(s.want(), MAX_PER_PULL as usize);
        s.handed_out(MAX_PER_PULL as usize);
        assert_eq!(s.credits, MAX_CREDITS - MAX_PER_PULL);
    }

    #[test]
    fn the_subscription_is_named_first_and_never_changes() {
        assert_eq!(
            Session::start(&req("", 1, &[])).unwrap_err(),
            SessionError::NoSubscription
        );
        let mut s = Session::start(&req("audit", 0, &[])).unwrap();
        s.on_request(req("audit", 1, &[])).unwrap();
        let e = s.on_request(req("other", 1, &[])).unwrap_err();
        assert_eq!(e.field(), "subscription");
        assert_eq!(s.want(), 1, "a refused request adds nothing");
        let mut r = req("", 1, &[]);
        r.consumer = "c2".into();
        assert_eq!(s.on_request(r).unwrap_err().field(), "consumer");
    }
}
