//! The registry's key layout: the one place that spells etcd keys.
//!
//! Every key of a cluster lives under `/meshd/{cluster}/`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `/meshd/{cluster}/nodes/{id}` | [`MemberInfo`](super::MemberInfo) JSON, role `node` | the member's |
//! | `/meshd/{cluster}/proxies/{id}` | [`MemberInfo`](super::MemberInfo) JSON, role `proxy` | the member's |
//! | `/meshd/{cluster}/groups/producer/{group}/{member}` | `{"role":…,"id":…}` of the reporter | the member's |
//! | `/meshd/{cluster}/groups/consumer/{group}/{member}` | `{"role":…,"id":…}` of the reporter | the member's |
//! | `/meshd/{cluster}/placement/current` | [`Placement`](super::Placement) JSON with its epoch | none |
//! | `/meshd/{cluster}/catalog/topics/{topic}` | the topic's `TopicConfig` JSON | none |
//! | `/meshd/{cluster}/catalog/subscriptions/{name}` | the subscription's `SubscriptionSpec` JSON | none |
//! | `/meshd/{cluster}/tokens/{id}` | a proxy token's record (hash, scopes; never the secret) | none |
//! | `/meshd/{cluster}/tokens-import` | the marker of the one import of a token file | none |
//!
//! `{member}` in a group key is `node:{id}` or `proxy:{id}`. Every variable segment
//! (cluster, id, group) is escaped so that it never contains `/`: `%` becomes `%25` and
//! `/` becomes `%2F`; everything else is kept as is, so keys stay readable in `etcdctl`.

use super::{CatalogKind, GroupKind, MemberId, Role};

/// Escapes one key segment: `%` → `%25`, `/` → `%2F`.
pub fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for c in segment.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`]; `None` for a malformed escape.
pub fn unescape(segment: &str) -> Option<String> {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 3)?;
        match code {
            "25" => out.push('%'),
            "2F" | "2f" => out.push('/'),
            _ => return None,
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Key builder for one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys of `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("/meshd/{}/", escape(cluster)),
        }
    }

    /// `/meshd/{cluster}/`: every key of the cluster.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn role_dir(role: Role) -> &'static str {
        match role {
            Role::Node => "nodes/",
            Role::Proxy => "proxies/",
        }
    }

    /// `/meshd/{cluster}/nodes/` or `/meshd/{cluster}/proxies/`.
    pub fn members_prefix(&self, role: Role) -> String {
        format!("{}{}", self.root, Self::role_dir(role))
    }

    /// `/meshd/{cluster}/nodes/{id}` or `/meshd/{cluster}/proxies/{id}`.
    pub fn member(&self, id: &MemberId) -> String {
        format!("{}{}", self.members_prefix(id.role), escape(&id.id))
    }

    /// Parses a member key of this cluster; `None` for any other key.
    pub fn parse_member(&self, key: &str) -> Option<MemberId> {
        let rest = key.strip_prefix(&self.root)?;
        for role in [Role::Node, Role::Proxy] {
            if let Some(id) = rest.strip_prefix(Self::role_dir(role)) {
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                return Some(MemberId {
                    role,
                    id: unescape(id)?,
                });
            }
        }
        None
    }

    /// `/meshd/{cluster}/groups/producer/` or `/meshd/{cluster}/groups/consumer/`.
    pub fn groups_prefix(&self, kind: GroupKind) -> String {
        let k = match kind {
            GroupKind::Producer => "producer",
            GroupKind::Consumer => "consumer",
        };
        format!("{}groups/{}/", self.root, k)
    }

    /// `/meshd/{cluster}/groups/{kind}/{group}/{role}:{id}`.
    pub fn group_member(&self, kind: GroupKind, group: &str, member: &MemberId) -> String {
        format!(
            "{}{}/{}:{}",
            self.groups_prefix(kind),
            escape(group),
            member.role.as_str(),
            escape(&member.id)
        )
    }

    /// Parses a group key of this cluster into (kind, group, member).
    pub fn parse_group_member(&self, key: &str) -> Option<(GroupKind, String, MemberId)> {
        for kind in [GroupKind::Producer, GroupKind::Consumer] {
            if let Some(rest) = key.strip_prefix(&self.groups_prefix(kind)) {
                let (group, member) = rest.split_once('/')?;
                let (role, id) = member.split_once(':')?;
                let role = Role::parse(role)?;
                return Some((
                    kind,
                    unescape(group)?,
                    MemberId {
                        role,
                        id: unescape(id)?,
                    },
                ));
            }
        }
        None
    }

    /// `/meshd/{cluster}/placement/current`.
    pub fn placement(&self) -> String {
        format!("{}placement/current", self.root)
    }

    /// `/meshd/{cluster}/catalog/`: every catalog entry.
    pub fn catalog_prefix(&self) -> String {
        format!("{}catalog/", self.root)
    }

    /// `/meshd/{cluster}/catalog/topics/{name}` or `.../catalog/subscriptions/{name}`.
    pub fn catalog(&self, kind: CatalogKind, name: &str) -> String {
        format!("{}{}/{}", self.catalog_prefix(), kind.dir(), escape(name))
    }

    /// Parses a catalog key of this cluster; `None` for any other key.
    pub fn parse_catalog(&self, key: &str) -> Option<(CatalogKind, String)> {
        let rest = key.strip_prefix(&self.catalog_prefix())?;
        let (dir, name) = rest.split_once('/')?;
        let kind = [
            CatalogKind::Schema,
            CatalogKind::Topic,
            CatalogKind::Subscription,
        ]
        .into_iter()
        .find(|k| k.dir() == dir)?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some((kind, unescape(name)?))
    }

    /// `/meshd/{cluster}/tokens/`: every token record.
    pub fn tokens_prefix(&self) -> String {
        format!("{}tokens/", self.root)
    }

    /// `/meshd/{cluster}/tokens/{id}`.
    pub fn token(&self, id: &str) -> String {
        format!("{}{}", self.tokens_prefix(), escape(id))
    }

    /// Parses a token key of this cluster into the id; `None` for any other key.
    pub fn parse_token(&self, key: &str) -> Option<String> {
        let id = key.strip_prefix(&self.tokens_prefix())?;
        if id.is_empty() || id.contains('/') {
            return None;
        }
        unescape(id)
    }

    /// `/meshd/{cluster}/tokens-import`: outside the tokens prefix, so no token watch
    /// sees it.
    pub fn tokens_import(&self) -> String {
        format!("{}tokens-import", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips() {
        for s in ["", "a", "a/b", "%", "%2F", "x%y/z//", "ünï/çødé"] {
            let e = escape(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(unescape("%"), None);
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%2"), None);
    }

    #[test]
    fn layout_is_as_documented() {
        let k = Keys::new("eu-1");
        let n = MemberId::node("n1");
        let p = MemberId::proxy("p/1");
        assert_eq!(k.member(&n), "/meshd/eu-1/nodes/n1");
        assert_eq!(k.member(&p), "/meshd/eu-1/proxies/p%2F1");
        assert_eq!(
            k.group_member(GroupKind::Producer, "orders/app", &n),
            "/meshd/eu-1/groups/producer/orders%2Fapp/node:n1"
        );
        assert_eq!(
            k.group_member(GroupKind::Consumer, "g", &p),
            "/meshd/eu-1/groups/consumer/g/proxy:p%2F1"
        );
        assert_eq!(k.placement(), "/meshd/eu-1/placement/current");
        assert_eq!(k.parse_member(&k.member(&p)), Some(p.clone()));
        assert_eq!(k.parse_member("/meshd/eu-1/nodes/"), None);
        assert_eq!(k.parse_member("/meshd/eu-2/nodes/n1"), None);
        assert_eq!(k.parse_member(&k.placement()), None);
        assert_eq!(
            k.parse_group_member(&k.group_member(GroupKind::Consumer, "a/b", &p)),
            Some((GroupKind::Consumer, "a/b".to_string(), p))
        );
        assert_eq!(k.parse_group_member("/meshd/eu-1/groups/producer/g"), None);
        assert_eq!(
            k.catalog(CatalogKind::Subscription, "a/b"),
            "/meshd/eu-1/catalog/subscriptions/a%2Fb"
        );
        assert_eq!(
            k.catalog(CatalogKind::Topic, "t"),
            "/meshd/eu-1/catalog/topics/t"
        );
        assert_eq!(
            k.parse_catalog("/meshd/eu-1/catalog/subscriptions/a%2Fb"),
            Some((CatalogKind::Subscription, "a/b".to_string()))
        );
        assert_eq!(k.parse_catalog("/meshd/eu-1/catalog/other/x"), None);
        assert_eq!(k.parse_catalog("/meshd/eu-1/catalog/topics/"), None);
        assert_eq!(k.parse_catalog(&k.placement()), None);
        assert_eq!(k.token("0a1b"), "/meshd/eu-1/tokens/0a1b");
        assert_eq!(k.parse_token(&k.token("a/b")).as_deref(), Some("a/b"));
        assert_eq!(k.parse_token("/meshd/eu-1/tokens/"), None);
        assert_eq!(k.parse_token(&k.tokens_import()), None);
        assert!(!k.tokens_import().starts_with(&k.tokens_prefix()));
    }
}
