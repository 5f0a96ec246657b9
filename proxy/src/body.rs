//! The client's request body on its way to a node: streamed frame by frame, never held
//! whole (except where a route needs to read it, [`crate::layers`]).
//!
//! [`ClientBody`] enforces the body limit and the body read timeout while it streams, and
//! records why it stopped ([`Fault`]) so the proxy answers 413, 408 or 400 rather than
//! blaming the node. [`SendBody::Stream`] keeps the body in a slot that an attempt takes
//! only when the connection to the node polls its first frame: when the attempt fails
//! and the slot still holds the body, nothing of it was sent, and the next node gets it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use meshd_listener::BodyError;

/// Errors of a body in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A request body as the proxy's layers see it (hyper's, or a test's), boxed. (A named
/// type rather than an alias: async blocks generic over services of a `dyn Error` body
/// trip rustc's higher-ranked lifetime inference.)
pub struct InBody(UnsyncBoxBody<Bytes, BoxError>);

/// Boxes any body into an [`InBody`].
pub fn boxed<B>(body: B) -> InBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    InBody(body.map_err(Into::into).boxed_unsync())
}

impl Body for InBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Why the client's body stopped; shared between the body and the forwarder.
#[derive(Clone, Default)]
pub struct Fault(Arc<Mutex<Option<BodyError>>>);

impl Fault {
    fn set(&self, e: BodyError) {
        if let Ok(mut f) = self.0.lock() {
            f.get_or_insert(e);
        }
    }

    /// The client's body failed (too large, too slow, or cut off), if it did.
    pub fn take(&self) -> Option<BodyError> {
        self.0.lock().ok().and_then(|mut f| f.take())
    }
}

/// The client's body under the limit and the read timeout (counted from when the proxy
/// starts taking it: after the head passed auth).
pub struct ClientBody {
    inner: InBody,
    limit: usize,
    read: usize,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    fault: Fault,
    done: bool,
}

impl ClientBody {
    /// Wraps `inner`; `fault` learns why it stopped early.
    pub fn new(inner: InBody, limit: usize, timeout: Duration, fault: Fault) -> ClientBody {
        ClientBody {
            inner,
            limit,
            read: 0,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            fault,
            done: false,
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let msg = e.to_string();
        self.fault.set(e);
        self.done = true;
        Poll::Ready(Some(Err(msg.into())))
    }

    /// Reads the whole body (for the routes that need it), under the same limit and
    /// timeout.
    pub async fn collect_all(self) -> Result<Bytes, BodyError> {
        let fault = self.fault.clone();
        match http_body_util::BodyExt::collect(self).await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => Err(fault
                .take()
                .unwrap_or_else(|| BodyError::Unreadable(e.to_string()))),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.read = this.read.saturating_add(d.len());
                    if this.read > this.limit {
                        return this.fail(BodyError::TooLarge { limit: this.limit });
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(BodyError::Unreadable(e.to_string())),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let timeout = this.timeout;
                    return this.fail(BodyError::Timeout { timeout });
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body a request takes to the nodes.
pub enum SendBody {
    /// Read whole (empty, or a route needed it): every attempt sends a copy.
    Bytes(Bytes),
    /// Streamed: the first attempt whose connection reads it takes it.
    Stream(Slot),
}

impl SendBody {
    /// The body of one attempt; `None` when an earlier attempt took the stream.
    pub fn attempt(&self) -> Option<InBody> {
        match self {
            SendBody::Bytes(b) => Some(boxed(http_body_util::Full::new(b.clone()))),
            SendBody::Stream(slot) => slot.attempt().map(boxed),
        }
    }

    /// Whether an attempt has started sending the body (so another node cannot get it).
    pub fn taken(&self) -> bool {
        match self {
            SendBody::Bytes(_) => false,
            SendBody::Stream(slot) => slot.taken(),
        }
    }

    /// Whether another attempt can carry the body after one that took it.
    pub fn replayable(&self) -> bool {
        matches!(self, SendBody::Bytes(_))
    }
}

/// A streamed body waiting for the attempt that sends it.
#[derive(Clone)]
pub struct Slot(Arc<Mutex<Option<ClientBody>>>);

impl Slot {
    /// A slot holding `body`.
    pub fn new(body: ClientBody) -> Slot {
        Slot(Arc::new(Mutex::new(Some(body))))
    }

    fn taken(&self) -> bool {
        self.0.lock().map(|b| b.is_none()).unwrap_or(true)
    }

    fn attempt(&self) -> Option<Taker> {
        let guard = self.0.lock().ok()?;
        let body = guard.as_ref()?;
        Some(Taker {
            slot: self.clone(),
            body: None,
            hint: body.size_hint(),
            end: body.is_end_stream(),
        })
    }
}

/// One attempt's view of a [`Slot`]: takes the body at its first poll.
struct Taker {
    slot: Slot,
    body: Option<ClientBody>,
    hint: SizeHint,
    end: bool,
}

impl Body for Taker {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this.slot.0.lock().ok().and_then(|mut s| s.take());
            if this.body.is_none() {
                return Poll::Ready(Some(Err(
                    "the request body was taken by another attempt".into()
                )));
            }
        }
        match this.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> InBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        boxed(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn the_limit_is_enforced_while_streaming_and_the_fault_says_so() {
        let fault = Fault::default();
        let b = ClientBody::new(
            chunks(&[b"12345", b"67890", b"x"]),
            10,
            Duration::from_secs(5),
            fault.clone(),
        );
        let e = b.collect_all().await.expect_err("over the limit");
        assert!(matches!(e, BodyError::TooLarge { limit: 10 }), "{e}");
        let b = ClientBody::new(
            chunks(&[b"12345", b"67890"]),
            10,
            Duration::from_secs(5),
            Fault::default(),
        );
        assert_eq!(b.collect_all().await.expect("at the limit"), "1234567890");
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_times_out() {
        let (_tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let fault = Fault::default();
        let b = ClientBody::new(
            boxed(http_body_util::StreamBody::new(rx)),
            10,
            Duration::from_millis(50),
            fault.clone(),
        );
        let e = b.collect_all().await.expect_err("never arrives");
        assert!(matches!(e, BodyError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_slot_gives_its_body_to_the_first_attempt_that_reads_it() {
        let slot = Slot::new(ClientBody::new(
            chunks(&[b"abc"]),
            10,
            Duration::from_secs(5),
            Fault::default(),
        ));
        let send = SendBody::Stream(slot);
        // An attempt dropped before reading (connect failed): the body stays.
        drop(send.attempt().expect("first attempt"));
        assert!(!send.taken());
        let second = send.attempt().expect("second attempt");
        let got = second.collect().await.expect("body").to_bytes();
        assert_eq!(got, "abc");
        assert!(send.taken());
        assert!(send.attempt().is_none(), "a streamed body goes out once");
        assert!(!send.replayable());
    }
}
