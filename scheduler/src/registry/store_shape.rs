//! Which event store a node runs on, as its member info tells the cluster, and the rule
//! that follows: **a node's embedded store serves one node per cluster.**
//!
//! The embedded store is a log private to its node: an event published to one node is
//! stored there and nowhere else, so a consumer group placed on another node never sees
//! it. A cluster with more than one node therefore runs every node on a shared store
//! (Pulsar). The rule is checked by the nodes themselves, from the registry's member
//! list ([`check_join`]) and its member watch ([`must_stop`]):
//!
//! - a node checks the members before it registers and refuses to join when the rule
//!   would break (an embedded node and any other node; a shared-store node and an
//!   embedded one; two shared-store nodes on different namespaces, which share nothing). The common case — a second node started against a running one —
//!   ends here and never disturbs the cluster;
//! - it checks again right after registering: of two nodes that register at the same
//!   time at least the later one sees the earlier (etcd reads are linearizable), so at
//!   least one of them refuses and deregisters before it delivers anything;
//! - a running embedded node that sees another node member appear (a racing newcomer, or
//!   a node that joined while this one's lease was lost) stops: both may stop, never both
//!   serve.
//!
//! Pure functions over [`MemberInfo`]s; the node's membership loop applies them.

use serde::{Deserialize, Serialize};

use super::{MemberInfo, Role};

/// The event store a node runs on (the `store` field of its member info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum MemberStore {
    /// The node's own embedded log: private to that node.
    Embedded,
    /// A store every node of the cluster shares (Pulsar), named by its URL.
    Shared {
        /// e.g. `pulsar://10.0.0.7:6650/public/default`.
        url: String,
    },
    /// A kind this version does not know (written by a newer node).
    #[serde(other)]
    Unknown,
}

/// The embedded-store rule would break: this node must not join (or keep serving).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreConflict {
    /// This node runs on the embedded store and another node is a member.
    #[error(
        "node {node} runs on the embedded store and node {other} is already a member of cluster {cluster}: \
         an embedded store serves one node per cluster (each node's log is private, so events published \
         to one node never reach a group owned by another); run every node of a multi-node cluster with \
         --store pulsar://HOST:PORT, or keep this cluster to one node"
    )]
    EmbeddedNotAlone {
        /// This node.
        node: String,
        /// The other node member.
        other: String,
        /// The cluster.
        cluster: String,
    },
    /// Another member of the cluster runs on the embedded store.
    #[error(
        "node {other} of cluster {cluster} runs on the embedded store, so node {node} cannot join: \
         an embedded store serves one node per cluster (each node's log is private, so events published \
         to one node never reach a group owned by another); run every node of a multi-node cluster with \
         --store pulsar://HOST:PORT"
    )]
    OtherIsEmbedded {
        /// This node.
        node: String,
        /// The embedded node.
        other: String,
        /// The cluster.
        cluster: String,
    },
    /// Both run on shared stores, but on different namespaces: they share nothing.
    #[error(
        "node {node} uses the shared store {url} but node {other} of cluster {cluster} uses {other_url}: \
         nodes of one cluster must share one namespace (--pulsar-tenant / --pulsar-namespace), or events \
         published to one node never reach a group owned by the other"
    )]
    SharedNamespaceMismatch {
        /// This node.
        node: String,
        /// Its store.
        url: String,
        /// The other node.
        other: String,
        /// The other node's store.
        other_url: String,
        /// The cluster.
        cluster: String,
    },
}

/// The `tenant/namespace` of a shared store URL (`pulsar://host:port/tenant/namespace`);
/// brokers of one Pulsar cluster have different addresses, so only this is compared.
fn namespace_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('/')
        .map(|(_, ns)| ns)
        .filter(|ns| !ns.is_empty())
}

/// Whether `me` may be a node of `cluster` alongside `members` (the registry's member
/// list; `me` itself, an earlier registration of the same node id, and proxies are
/// ignored). Members that do not say their store (older versions) only conflict with an
/// embedded `me`.
pub fn check_join(
    cluster: &str,
    me: &MemberInfo,
    members: &[MemberInfo],
) -> Result<(), StoreConflict> {
    members
        .iter()
        .try_for_each(|other| check_pair(cluster, me, other))
}

/// Whether a running node `me` must stop because `other` became a member: only an
/// embedded node stops (a shared-store node keeps serving; the embedded newcomer stops
/// itself).
pub fn must_stop(cluster: &str, me: &MemberInfo, other: &MemberInfo) -> Option<StoreConflict> {
    if me.store != Some(MemberStore::Embedded) {
        return None;
    }
    check_pair(cluster, me, other).err()
}

fn check_pair(cluster: &str, me: &MemberInfo, other: &MemberInfo) -> Result<(), StoreConflict> {
    if me.role != Role::Node || other.role != Role::Node || other.id == me.id {
        return Ok(());
    }
    if me.store == Some(MemberStore::Embedded) {
        return Err(StoreConflict::EmbeddedNotAlone {
            node: me.id.clone(),
            other: other.id.clone(),
            cluster: cluster.to_string(),
        });
    }
    if other.store == Some(MemberStore::Embedded) {
        return Err(StoreConflict::OtherIsEmbedded {
            node: me.id.clone(),
            other: other.id.clone(),
            cluster: cluster.to_string(),
        });
    }
    if let (Some(MemberStore::Shared { url }), Some(MemberStore::Shared { url: other_url })) =
        (&me.store, &other.store)
    {
        if let (Some(a), Some(b)) = (namespace_of(url), namespace_of(other_url)) {
            if a != b {
                return Err(StoreConflict::SharedNamespaceMismatch {
                    node: me.id.clone(),
                    url: url.clone(),
                    other: other.id.clone(),
                    other_url: other_url.clone(),
                    cluster: cluster.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, store: Option<MemberStore>) -> MemberInfo {
        let mut m = MemberInfo::new(Role::Node, id, format!("http://{id}"));
        m.store = store;
        m
    }

    fn shared() -> Option<MemberStore> {
        Some(MemberStore::Shared {
            url: "pulsar://p:6650/public/default".into(),
        })
    }

    #[test]
    fn an_embedded_node_joins_only_an_empty_cluster() {
        let me = node("a", Some(MemberStore::Embedded));
        let proxy = MemberInfo::new(Role::Proxy, "p1", "http://p1");
        // Alone, with proxies, or with its own earlier registration (a restart within the
        // old lease): fine.
        assert_eq!(check_join("c", &me, &[]), Ok(()));
        assert_eq!(check_join("c", &me, &[proxy.clone(), me.clone()]), Ok(()));
        for other in [
            node("b", Some(MemberStore::Embedded)),
            node("b", shared()),
            node("b", None),
        ] {
            let e = check_join("c", &me, &[proxy.clone(), other]).unwrap_err();
            assert!(matches!(e, StoreConflict::EmbeddedNotAlone { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("node b") && text.contains("cluster c"),
                "{text}"
            );
            assert!(text.contains("--store pulsar://"), "{text}");
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn a_shared_node_refuses_a_cluster_with_an_embedded_node() {
        let me = node("b", shared());
        assert_eq!(
            check_join("c", &me, &[node("a", shared()), node("x", None)]),
            Ok(())
        );
        let e = check_join(
            "c",
            &me,
            &[node("a", shared()), node("e", Some(MemberStore::Embedded))],
        )
        .unwrap_err();
        assert_eq!(
            e,
            StoreConflict::OtherIsEmbedded {
                node: "b".into(),
                other: "e".into(),
                cluster: "c".into()
            }
        );
    }

    #[test]
    fn shared_nodes_must_share_a_namespace_not_a_broker_address() {
        let on = |id: &str, url: &str| {
            node(
                id,
                Some(MemberStore::Shared {
                    url: url.to_string(),
                }),
            )
        };
        let me = on("b", "pulsar://broker-2:6650/public/default");
        // Another broker of the same Pulsar cluster: fine.
        assert_eq!(
            check_join(
                "c",
                &me,
                &[on("a", "pulsar://broker-1:6650/public/default")]
            ),
            Ok(())
        );
        let e =
            check_join("c", &me, &[on("a", "pulsar://broker-1:6650/public/other")]).unwrap_err();
        assert!(
            matches!(e, StoreConflict::SharedNamespaceMismatch { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("public/other"), "{e}");
        // A running shared node does not stop for it (the newcomer refuses).
        assert!(must_stop("c", &me, &on("a", "pulsar://x:1/t/n")).is_none());
        assert_eq!(namespace_of("pulsar://h:1"), None);
        assert_eq!(namespace_of("pulsar://h:1/t/n"), Some("t/n"));
    }

    #[test]
    fn only_a_running_embedded_node_stops_when_another_node_appears() {
        let emb = node("a", Some(MemberStore::Embedded));
        let sh = node("b", shared());
        assert!(must_stop("c", &emb, &sh).is_some());
        assert!(must_stop("c", &emb, &emb).is_none(), "itself");
        assert!(must_stop("c", &emb, &MemberInfo::new(Role::Proxy, "p", "http://p")).is_none());
        // The shared node keeps serving; the embedded newcomer stops itself.
        assert!(must_stop("c", &sh, &emb).is_none());
        assert!(must_stop("c", &sh, &node("d", shared())).is_none());
    }

    #[test]
    fn the_store_travels_in_member_info_and_unknown_kinds_are_tolerated() {
        let m = node("a", shared());
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["store"]["kind"], "shared");
        assert_eq!(serde_json::from_value::<MemberInfo>(v).unwrap(), m);
        let mut v = serde_json::to_value(node("a", None)).unwrap();
        assert!(v.get("store").is_none());
        assert_eq!(
            serde_json::from_value::<MemberInfo>(v.clone())
                .unwrap()
                .store,
            None
        );
        v["store"] = serde_json::json!({"kind": "bookkeeper", "x": 1});
        assert_eq!(
            serde_json::from_value::<MemberInfo>(v).unwrap().store,
            Some(MemberStore::Unknown)
        );
    }
}
