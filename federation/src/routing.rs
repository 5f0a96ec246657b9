//! Which interest a cluster relays to which neighbour, over the cheapest paths.
//!
//! Interest flows against the direction events will travel: cluster X tells neighbour N
//! "send me events for D" exactly when X is N's next hop towards D on N's cheapest path
//! (computed with the links X knows to be down excluded). Events then follow the reverse
//! of the interest: N forwards to X, X stores them and forwards to its next hop, and so on
//! to D. When a link goes down, the tables are rebuilt without it and the interest (hence
//! the traffic) moves to the next cheapest path.

use std::collections::HashSet;

use meshd_topology::{ClusterName, RoutingTable, Topology};

/// The prefix of relay topics (see [`relay_topic`]).
pub const RELAY_PREFIX: &str = "__relay.";

/// The internal topic where a relay cluster keeps the events of `topic` that the
/// replication policy does not allow it to receive (`__relay.TOPIC`).
pub fn relay_topic(topic: &str) -> String {
    format!("{RELAY_PREFIX}{topic}")
}

/// The routing view of one cluster.
#[derive(Debug, Clone)]
pub struct Routes {
    me: String,
    topology: Topology,
    down: HashSet<(ClusterName, ClusterName)>,
}

impl Routes {
    /// Routes of cluster `me` over `topology` with the links in `down_peers` (links from
    /// `me` to those neighbours) excluded.
    pub fn new(topology: &Topology, me: &str, down_peers: &HashSet<String>) -> Routes {
        let mut down = HashSet::new();
        if let Ok(me_name) = ClusterName::new(me) {
            for p in down_peers {
                if let Ok(pn) = ClusterName::new(p) {
                    down.insert((me_name.clone(), pn));
                }
            }
        }
        Routes {
            me: me.to_string(),
            topology: topology.clone(),
            down,
        }
    }

    /// Should interest of `dest` be announced to `neighbor` (so that `neighbor` forwards
    /// `dest`'s events to us)? True when we are `neighbor`'s next hop towards `dest` (for
    /// our own interest: when the direct link is `neighbor`'s cheapest path to us).
    pub fn relays(&self, neighbor: &str, dest: &str) -> bool {
        if dest == neighbor {
            return false;
        }
        let (Ok(n), Ok(d)) = (ClusterName::new(neighbor), ClusterName::new(dest)) else {
            return false;
        };
        let table = RoutingTable::build(&self.topology, &n, &self.down);
        table.next_hop(&d).map(|h| h.as_str() == self.me) == Some(true)
    }

    /// The path from us to `dest`, if reachable.
    pub fn path(&self, dest: &str) -> Option<Vec<String>> {
        let me = ClusterName::new(&self.me).ok()?;
        let d = ClusterName::new(dest).ok()?;
        RoutingTable::build(&self.topology, &me, &self.down)
            .path(&d)
            .map(|p| p.iter().map(|c| c.to_string()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(links: &str) -> Topology {
        let mut s = String::from("[mesh]\nname = \"m\"\n");
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            s.push_str(&format!(
                "[[cluster]]\nname = \"{c}\"\nregion = \"r\"\ncloud = \"x\"\nbridge = \"127.0.0.1:{}\"\nproxy = \"http://127.0.0.1:{}\"\n",
                i + 10,
                i + 20
            ));
        }
        s.push_str(links);
        Topology::parse(&s).expect("valid topology")
    }

    #[test]
    fn line_relays_through_the_middle() {
        let t = topo("[[link]]\nbetween = [\"a\", \"b\"]\ncost = 1\n[[link]]\nbetween = [\"b\", \"c\"]\ncost = 1\n");
        let b = Routes::new(&t, "b", &HashSet::new());
        // b tells a: send me c's events.
        assert!(b.relays("a", "c"));
        assert!(b.relays("a", "b"));
        // b never tells c about c, nor a about a.
        assert!(!b.relays("c", "c"));
        assert!(!b.relays("a", "a"));
        assert_eq!(b.path("c").unwrap(), vec!["b", "c"]);
    }

    #[test]
    fn triangle_reroutes_when_a_link_is_down() {
        let t = topo("[[link]]\nbetween = [\"a\", \"b\"]\ncost = 1\n[[link]]\nbetween = [\"b\", \"c\"]\ncost = 1\n[[link]]\nbetween = [\"a\", \"c\"]\ncost = 10\n");
        // a reaches c through b (cost 2 < 10): b relays c's interest to a.
        let b = Routes::new(&t, "b", &HashSet::new());
        assert!(b.relays("a", "c"));
        // c's own interest goes to b (a's cheapest path to c is through b), not to a.
        let c = Routes::new(&t, "c", &HashSet::new());
        assert!(c.relays("b", "c"));
        assert!(!c.relays("a", "c"));
        // With b—c down (seen by c), c announces itself to a directly.
        let c_down = Routes::new(&t, "c", &HashSet::from(["b".to_string()]));
        assert!(c_down.relays("a", "c"));
        // With b—c down (seen by b), b stops relaying c to a.
        let b_down = Routes::new(&t, "b", &HashSet::from(["c".to_string()]));
        assert!(!b_down.relays("a", "c"));
    }
}
