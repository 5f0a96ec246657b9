//! What a valid topology means: digest stability, diffs, replication policy, routing.

use std::collections::HashSet;

use meshd_topology::{ClusterName, RoutingTable, Topology};

fn name(s: &str) -> ClusterName {
    ClusterName::new(s).expect("valid name")
}

fn cluster(name: &str) -> String {
    format!(
        "[[cluster]]\nname = \"{name}\"\nregion = \"r-{name}\"\ncloud = \"c\"\nbridge = \"{name}.example:7443\"\nproxy = \"https://{name}.example\"\n\n"
    )
}

fn link(a: &str, b: &str, cost: u32) -> String {
    format!("[[link]]\nbetween = [\"{a}\", \"{b}\"]\ncost = {cost}\n\n")
}

/// A topology with the given clusters and links `(a, b, cost)`.
fn topo(clusters: &[&str], links: &[(&str, &str, u32)]) -> Topology {
    let mut text = String::from("[mesh]\nname = \"m\"\n\n");
    for c in clusters {
        text.push_str(&cluster(c));
    }
    for (a, b, cost) in links {
        text.push_str(&link(a, b, *cost));
    }
    Topology::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn down(pairs: &[(&str, &str)]) -> HashSet<(ClusterName, ClusterName)> {
    pairs.iter().map(|(a, b)| (name(a), name(b))).collect()
}

fn path(t: &RoutingTable, dest: &str) -> Option<Vec<String>> {
    t.path(&name(dest))
        .map(|p| p.iter().map(|c| c.to_string()).collect())
}

const EXAMPLE: &str = include_str!("data/example.toml");

// ---- digest ------------------------------------------------------------------------------

#[test]
fn digest_is_hex_sha256_and_stable_under_reordering_and_formatting() {
    let t = Topology::parse(EXAMPLE).expect("valid");
    let d = t.digest();
    assert_eq!(d.len(), 64);
    assert!(d
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    // Same content: clusters, links, policies and keys in another order; link ends
    // swapped; comments and spacing changed; inline tables.
    let reordered = r#"
[[policy]]
clusters = []
topics = "audit"

[[link]]
cost = 210
between = ["ap-south", "us-east"]

[[cluster]]
proxy = "https://events.ap-south.acme.example/"
bridge = "10.40.0.7:7443"
cloud = "gcp"
region = "asia-south1"
name = "ap-south"

[[cluster]]
name = "us-east"
region = "us-east-1"
cloud = "aws"
bridge = "bridge.us-east.acme.example:7443"
proxy = "https://events.us-east.acme.example"     # trailing comment

[[link]]
between = [ "eu-central" , "eu-west" ]
cost = 12
[[link]]
between = ["us-east", "eu-west"]
cost = 75
[[link]]
between = ["ap-south", "eu-central"]
cost = 120

[[cluster]]
name = "eu-central"
region = "europe-west3"
cloud = "gcp"
bridge = "bridge.eu-central.acme.example:7443"
proxy = "https://events.eu-central.acme.example"

[[policy]]
topics = "payments.*"
clusters = ["eu-central", "eu-west"]

[[cluster]]
name = "eu-west"
region = "eu-west-1"
cloud = "aws"
bridge = "bridge.eu-west.acme.example:7443"
proxy = "https://events.eu-west.acme.example"

[mesh]
name = "acme"
"#;
    let r = Topology::parse(reordered).expect("valid");
    assert_eq!(r, t);
    assert_eq!(r.digest(), d);
}

#[test]
fn digest_changes_with_any_content_change() {
    let base = Topology::parse(EXAMPLE).expect("valid").digest();
    let edits = [
        ("name = \"acme\"", "name = \"acme2\""),
        ("region = \"us-east-1\"", "region = \"us-east-2\""),
        ("cloud = \"gcp\"", "cloud = \"azure\""),
        ("10.40.0.7:7443", "10.40.0.7:7444"),
        (
            "https://events.us-east.acme.example",
            "https://events2.us-east.acme.example",
        ),
        ("cost = 12", "cost = 13"),
        ("topics = \"audit\"", "topics = \"audit.*\""),
        ("clusters = []", "clusters = [\"us-east\"]"),
        (
            "cost = 210",
            "cost = 210\n\n[[link]]\nbetween = [\"eu-west\", \"ap-south\"]\ncost = 150",
        ),
    ];
    let mut seen = HashSet::new();
    seen.insert(base.clone());
    for (from, to) in edits {
        assert!(EXAMPLE.contains(from), "{from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let d = Topology::parse(&text)
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"))
            .digest();
        assert!(
            seen.insert(d),
            "digest unchanged or repeated after {from} -> {to}"
        );
    }
}

// ---- diff ----------------------------------------------------------------------------------

#[test]
fn diff_of_identical_topologies_is_empty() {
    let t = Topology::parse(EXAMPLE).expect("valid");
    assert!(Topology::diff(&t, &t).is_empty());
}

#[test]
fn diff_added_removed_and_changed() {
    let old = topo(
        &["a", "b", "c"],
        &[("a", "b", 10), ("b", "c", 10), ("a", "c", 30)],
    );
    // d added (linked to c), a removed, b's region changed, b-c cost changed, a-b and
    // a-c removed with a, c-d added.
    let mut text = String::from("[mesh]\nname = \"m\"\n\n");
    text.push_str(&cluster("b").replace("r-b", "r-b2"));
    text.push_str(&cluster("c"));
    text.push_str(&cluster("d"));
    text.push_str(&link("b", "c", 15));
    text.push_str(&link("c", "d", 5));
    let new = Topology::parse(&text).expect("valid");
    let d = Topology::diff(&old, &new);
    assert_eq!(d.mesh_renamed, None);
    assert_eq!(d.added_clusters, vec![name("d")]);
    assert_eq!(d.removed_clusters, vec![name("a")]);
    assert_eq!(d.changed_clusters, vec![name("b")]);
    let pairs = |ls: &[meshd_topology::Link]| -> Vec<(String, String, u32)> {
        ls.iter()
            .map(|l| (l.a.to_string(), l.b.to_string(), l.cost))
            .collect()
    };
    assert_eq!(pairs(&d.added_links), vec![("c".into(), "d".into(), 5)]);
    assert_eq!(
        pairs(&d.removed_links),
        vec![("a".into(), "b".into(), 10), ("a".into(), "c".into(), 30)]
    );
    assert_eq!(d.changed_links.len(), 1);
    let ch = &d.changed_links[0];
    assert_eq!(
        (ch.a.as_str(), ch.b.as_str(), ch.old_cost, ch.new_cost),
        ("b", "c", 10, 15)
    );
    assert!(!d.policy_changed);
    assert!(!d.is_empty());
}

#[test]
fn diff_sees_policy_and_mesh_name_changes_and_nothing_else() {
    let old = Topology::parse(EXAMPLE).expect("valid");
    let new = Topology::parse(&EXAMPLE.replace(
        "clusters = [\"eu-west\", \"eu-central\"]",
        "clusters = [\"eu-west\"]",
    ))
    .expect("valid");
    let d = Topology::diff(&old, &new);
    assert!(d.policy_changed);
    assert!(d.added_clusters.is_empty() && d.removed_clusters.is_empty());
    assert!(d.changed_clusters.is_empty());
    assert!(d.added_links.is_empty() && d.removed_links.is_empty() && d.changed_links.is_empty());

    let renamed =
        Topology::parse(&EXAMPLE.replace("name = \"acme\"", "name = \"acme-2\"")).expect("valid");
    let d = Topology::diff(&old, &renamed);
    assert_eq!(d.mesh_renamed, Some(("acme".into(), "acme-2".into())));
    assert!(!d.policy_changed);
}

#[test]
fn diff_sees_a_proxy_change_and_ignores_link_order() {
    let old = topo(&["a", "b"], &[("a", "b", 10)]);
    let same = topo(&["b", "a"], &[("b", "a", 10)]);
    assert!(Topology::diff(&old, &same).is_empty());
    let text = format!(
        "[mesh]\nname = \"m\"\n{}{}{}",
        cluster("a").replace("https://a.example", "https://a2.example"),
        cluster("b"),
        link("a", "b", 10)
    );
    let new = Topology::parse(&text).expect("valid");
    assert_eq!(Topology::diff(&old, &new).changed_clusters, vec![name("a")]);
}

// ---- replication policy --------------------------------------------------------------------

#[test]
fn may_receive_follows_the_most_specific_policy() {
    let mut text = EXAMPLE.to_string();
    text.push_str(
        "\n[[policy]]\ntopics = \"payments.refunds.*\"\nclusters = [\"eu-west\"]\n\n[[policy]]\ntopics = \"payments.eu\"\nclusters = [\"eu-central\"]\n\n[[policy]]\ntopics = \"*\"\nclusters = [\"eu-west\", \"us-east\"]\n",
    );
    let t = Topology::parse(&text).expect("valid");
    // `*` governs topics no other policy covers.
    assert!(t.may_receive("orders", "us-east"));
    assert!(!t.may_receive("orders", "ap-south"));
    // payments.* (not the bare prefix).
    assert!(t.may_receive("payments.cards", "eu-central"));
    assert!(!t.may_receive("payments.cards", "us-east"));
    assert!(!t.may_receive("payments", "eu-central")); // falls to `*`
                                                       // Longer prefix beats shorter.
    assert!(t.may_receive("payments.refunds.x", "eu-west"));
    assert!(!t.may_receive("payments.refunds.x", "eu-central"));
    // Exact beats prefix.
    assert!(t.may_receive("payments.eu", "eu-central"));
    assert!(!t.may_receive("payments.eu", "eu-west"));
    // Empty list: nobody.
    for c in ["eu-west", "eu-central", "us-east", "ap-south"] {
        assert!(!t.may_receive("audit", c));
    }
    // Unknown cluster: never.
    assert!(!t.may_receive("orders", "mars"));
}

#[test]
fn without_a_matching_policy_every_cluster_may_receive() {
    let t = Topology::parse(EXAMPLE).expect("valid");
    for c in ["eu-west", "eu-central", "us-east", "ap-south"] {
        assert!(t.may_receive("orders", c));
        assert!(t.may_receive("audit.extra", c)); // `audit` is exact, not a prefix
    }
    assert!(!t.may_receive("payments.x", "us-east"));
}

// ---- routing -------------------------------------------------------------------------------

#[test]
fn line_a_b_c_reaches_c_through_b() {
    let t = topo(&["a", "b", "c"], &[("a", "b", 10), ("b", "c", 20)]);
    let from_c = RoutingTable::build(&t, &name("c"), &HashSet::new());
    assert_eq!(from_c.next_hop(&name("a")), Some(name("b")));
    assert_eq!(
        path(&from_c, "a"),
        Some(vec!["c".into(), "b".into(), "a".into()])
    );
    assert_eq!(from_c.cost(&name("a")), Some(30));
    assert_eq!(from_c.cost(&name("b")), Some(20));
    assert_eq!(from_c.next_hop(&name("b")), Some(name("b")));
    // Itself: cost 0, path [c], no next hop.
    assert_eq!(from_c.cost(&name("c")), Some(0));
    assert_eq!(path(&from_c, "c"), Some(vec!["c".into()]));
    assert_eq!(from_c.next_hop(&name("c")), None);
    assert_eq!(from_c.routes().count(), 2);
    let from_a = RoutingTable::build(&t, &name("a"), &HashSet::new());
    assert_eq!(
        path(&from_a, "c"),
        Some(vec!["a".into(), "b".into(), "c".into()])
    );
}

#[test]
fn cheapest_path_wins_over_fewest_hops() {
    // a-c direct costs 100; a-b-c costs 30.
    let t = topo(
        &["a", "b", "c"],
        &[("a", "c", 100), ("a", "b", 10), ("b", "c", 20)],
    );
    let r = RoutingTable::build(&t, &name("a"), &HashSet::new());
    assert_eq!(r.next_hop(&name("c")), Some(name("b")));
    assert_eq!(r.cost(&name("c")), Some(30));
}

#[test]
fn ring_with_a_failed_link_reroutes() {
    // Ring a-b-c-d-a.
    let t = topo(
        &["a", "b", "c", "d"],
        &[
            ("a", "b", 10),
            ("b", "c", 10),
            ("c", "d", 10),
            ("d", "a", 50),
        ],
    );
    let up = RoutingTable::build(&t, &name("a"), &HashSet::new());
    assert_eq!(
        path(&up, "c"),
        Some(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(up.cost(&name("d")), Some(30)); // a-b-c-d beats a-d (50)
                                               // a-b fails (given in either order): everything goes round the other way.
    let r = RoutingTable::build(&t, &name("a"), &down(&[("b", "a")]));
    assert_eq!(
        path(&r, "c"),
        Some(vec!["a".into(), "d".into(), "c".into()])
    );
    assert_eq!(r.cost(&name("c")), Some(60));
    assert_eq!(r.next_hop(&name("b")), Some(name("d")));
    assert_eq!(r.cost(&name("b")), Some(70));
}

#[test]
fn disconnected_after_failures_has_no_route() {
    let t = topo(&["a", "b", "c"], &[("a", "b", 10), ("b", "c", 10)]);
    let r = RoutingTable::build(&t, &name("a"), &down(&[("b", "c")]));
    assert_eq!(r.next_hop(&name("c")), None);
    assert_eq!(r.path(&name("c")), None);
    assert_eq!(r.cost(&name("c")), None);
    assert_eq!(r.next_hop(&name("b")), Some(name("b")));
    // Unknown destinations and an unknown origin: nothing.
    assert_eq!(r.next_hop(&name("zz")), None);
    let none = RoutingTable::build(&t, &name("zz"), &HashSet::new());
    assert_eq!(none.routes().count(), 0);
    assert_eq!(none.cost(&name("a")), None);
}

#[test]
fn down_links_not_in_the_topology_are_ignored() {
    let t = topo(&["a", "b"], &[("a", "b", 10)]);
    let r = RoutingTable::build(&t, &name("a"), &down(&[("a", "x"), ("a", "a")]));
    assert_eq!(r.cost(&name("b")), Some(10));
}

#[test]
fn equal_cost_ties_break_on_hops_then_names() {
    // Square a-b-d and a-c-d, every link 10: equal cost and hops; b < c wins.
    let t = topo(
        &["d", "c", "b", "a"],
        &[
            ("c", "d", 10),
            ("a", "c", 10),
            ("b", "d", 10),
            ("a", "b", 10),
        ],
    );
    let r = RoutingTable::build(&t, &name("a"), &HashSet::new());
    assert_eq!(
        path(&r, "d"),
        Some(vec!["a".into(), "b".into(), "d".into()])
    );
    // From d the same rule picks b as well (lexicographic on the whole path).
    let r = RoutingTable::build(&t, &name("d"), &HashSet::new());
    assert_eq!(
        path(&r, "a"),
        Some(vec!["d".into(), "b".into(), "a".into()])
    );

    // Equal cost, different hop counts: fewer hops wins even against a smaller name.
    // a-z direct 20; a-b-z 10+10.
    let t = topo(
        &["a", "b", "z"],
        &[("a", "b", 10), ("b", "z", 10), ("a", "z", 20)],
    );
    let r = RoutingTable::build(&t, &name("a"), &HashSet::new());
    assert_eq!(path(&r, "z"), Some(vec!["a".into(), "z".into()]));
}

#[test]
fn routing_does_not_depend_on_file_order() {
    let links = [
        ("a", "b", 5),
        ("b", "c", 5),
        ("a", "d", 5),
        ("d", "c", 5),
        ("c", "e", 1),
        ("b", "e", 11),
    ];
    let t1 = topo(&["a", "b", "c", "d", "e"], &links);
    let mut rev = links;
    rev.reverse();
    let rev: Vec<_> = rev.iter().map(|(a, b, c)| (*b, *a, *c)).collect();
    let t2 = topo(&["e", "d", "c", "b", "a"], &rev);
    for from in ["a", "b", "c", "d", "e"] {
        let r1 = RoutingTable::build(&t1, &name(from), &HashSet::new());
        let r2 = RoutingTable::build(&t2, &name(from), &HashSet::new());
        assert_eq!(r1, r2, "from {from}");
    }
    let r = RoutingTable::build(&t1, &name("a"), &HashSet::new());
    // a-b-c-e and a-d-c-e both cost 11, and a-b-e costs 16: b before d.
    assert_eq!(
        path(&r, "e"),
        Some(vec!["a".into(), "b".into(), "c".into(), "e".into()])
    );
}

#[test]
fn example_mesh_routes() {
    let t = Topology::parse(EXAMPLE).expect("valid");
    let r = RoutingTable::build(&t, &name("us-east"), &HashSet::new());
    // us-east → ap-south: direct 210 vs via eu-west, eu-central: 75+12+120 = 207.
    assert_eq!(r.cost(&name("ap-south")), Some(207));
    assert_eq!(r.next_hop(&name("ap-south")), Some(name("eu-west")));
    let r = RoutingTable::build(&t, &name("us-east"), &down(&[("eu-west", "eu-central")]));
    assert_eq!(r.cost(&name("ap-south")), Some(210));
    assert_eq!(r.next_hop(&name("ap-south")), Some(name("ap-south")));
    assert_eq!(r.cost(&name("eu-central")), Some(330));
}
