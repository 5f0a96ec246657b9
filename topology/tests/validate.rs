//! Every validation error of the topology file: its line, column and message; and that
//! all problems of one file are reported together.

use meshd_topology::{Topology, TopologyErrorKind as K};

const CLUSTER_A: &str = r#"
[[cluster]]
name = "a"
region = "r1"
cloud = "aws"
bridge = "a.example:7443"
proxy = "https://a.example"
"#;

/// A mesh header, then the given text. Line 1 is `[mesh]`, line 2 the name.
fn with_mesh(body: &str) -> String {
    format!("[mesh]\nname = \"m\"\n{body}")
}

/// `(line, column, message)` of every error.
fn errors(text: &str) -> Vec<(usize, usize, String)> {
    match Topology::parse(text) {
        Ok(_) => panic!("expected errors, the topology was accepted:\n{text}"),
        Err(e) => e
            .errors()
            .iter()
            .map(|e| (e.line, e.column, e.message()))
            .collect(),
    }
}

/// The only error: its line, column and message.
fn one_error(text: &str) -> (usize, usize, String) {
    let mut es = errors(text);
    assert_eq!(es.len(), 1, "expected exactly one error, got {es:#?}");
    es.remove(0)
}

fn cluster(name: &str, bridge: &str) -> String {
    format!(
        "\n[[cluster]]\nname = \"{name}\"\nregion = \"r\"\ncloud = \"c\"\nbridge = \"{bridge}\"\nproxy = \"https://{name}.example\"\n"
    )
}

#[test]
fn the_example_file_is_valid() {
    let t = Topology::parse(include_str!("data/example.toml")).expect("valid");
    assert_eq!(t.mesh(), "acme");
    assert_eq!(t.cluster_count(), 4);
    assert_eq!(t.link_count(), 4);
    assert_eq!(t.policies().count(), 2);
    let ap = t.cluster("ap-south").expect("ap-south");
    assert_eq!(ap.bridge.to_string(), "10.40.0.7:7443");
    assert_eq!(ap.proxy.as_str(), "https://events.ap-south.acme.example/");
}

#[test]
fn the_example_in_the_docs_is_valid_and_is_the_test_file() {
    let doc = include_str!("../../docs/topology.md");
    let start = doc
        .find("```toml\n# The acme mesh")
        .expect("full example in docs");
    let body = &doc[start + "```toml\n".len()..];
    let end = body.find("```").expect("closing fence");
    let example = &body[..end];
    assert_eq!(example, include_str!("data/example.toml"));
    Topology::parse(example).expect("the documented example is valid");
}

#[test]
fn syntax_errors_have_lines() {
    let es = errors("[mesh]\nname = \"m\"\n[[cluster]\nname = = 3\n");
    assert!(es.len() >= 2, "{es:?}");
    assert_eq!(es[0].0, 3);
    assert!(es[0].2.starts_with("TOML syntax error"), "{}", es[0].2);
    assert!(es[0].2.contains("expected `]`"), "{}", es[0].2);
    assert_eq!(es[1].0, 4);
}

#[test]
fn unterminated_string_is_a_syntax_error_on_its_line() {
    let (line, _, msg) = errors(&with_mesh("\n[[cluster]]\nname = \"a\nregion = \"r\"\n"))
        .into_iter()
        .next()
        .expect("an error");
    assert_eq!(line, 5);
    assert!(msg.starts_with("TOML syntax error"), "{msg}");
}

#[test]
fn unknown_fields_are_all_reported() {
    let text = format!(
        "[mesh]\nname = \"m\"\ncolour = \"red\"\n{CLUSTER_A}zone = 3\nextra = 1\n[other]\nx = 1\n"
    );
    let es = errors(&text);
    assert_eq!(
        es,
        vec![
            (3, 1, "unknown field `colour` in [mesh]; expected one of: name".into()),
            (11, 1, "unknown field `zone` in cluster \"a\"; expected one of: name, region, cloud, bridge, proxy".into()),
            (12, 1, "unknown field `extra` in cluster \"a\"; expected one of: name, region, cloud, bridge, proxy".into()),
            (13, 2, "unknown field `other` in the top level; expected one of: mesh, cluster, link, policy".into()),
        ]
    );
}

#[test]
fn empty_mesh_name() {
    let (line, col, msg) = one_error(&format!("[mesh]\nname = \"\"\n{CLUSTER_A}"));
    assert_eq!((line, col), (2, 8));
    assert_eq!(msg, "mesh name \"\" is invalid: it must not be empty");
}

#[test]
fn missing_mesh_and_missing_name() {
    let (line, _, msg) = one_error(CLUSTER_A);
    assert_eq!(line, 1);
    assert!(msg.starts_with("missing [mesh] table"), "{msg}");
    let (line, _, msg) = one_error(&format!("[mesh]\n{CLUSTER_A}"));
    assert_eq!(line, 1);
    assert_eq!(msg, "missing field `name` in [mesh]");
}

#[test]
fn no_clusters() {
    let (_, _, msg) = one_error("[mesh]\nname = \"m\"\n");
    assert_eq!(
        msg,
        "the mesh has no clusters: add at least one [[cluster]]"
    );
    let (_, _, msg) = one_error("cluster = []\n[mesh]\nname = \"m\"\n");
    assert_eq!(
        msg,
        "the mesh has no clusters: add at least one [[cluster]]"
    );
}

#[test]
fn cluster_must_be_an_array_of_tables() {
    let (line, _, msg) = one_error(&with_mesh(
        "[cluster]\nname = \"a\"\nregion = \"r\"\ncloud = \"c\"\nbridge = \"a:1\"\nproxy = \"http://a\"\n",
    ));
    assert_eq!(line, 3);
    assert_eq!(
        msg,
        "cluster: `cluster` must be an array of tables: write each one as [[cluster]], found a table"
    );
}

#[test]
fn missing_and_mistyped_cluster_fields() {
    let text = with_mesh("\n[[cluster]]\nname = \"a\"\nregion = 5\nbridge = \"a:1\"\n");
    let es = errors(&text);
    assert_eq!(
        es,
        vec![
            (4, 1, "missing field `cloud` in cluster \"a\"".into()),
            (4, 1, "missing field `proxy` in cluster \"a\"".into()),
            (
                6,
                10,
                "cluster \"a\": `region` must be a string, found integer".into()
            ),
        ]
    );
}

#[test]
fn empty_region_and_cloud() {
    let text = with_mesh("\n[[cluster]]\nname = \"a\"\nregion = \"\"\ncloud = \" \"\nbridge = \"a:1\"\nproxy = \"http://a\"\n");
    assert_eq!(
        errors(&text),
        vec![
            (6, 10, "cluster \"a\": `region` must not be empty".into()),
            (7, 9, "cluster \"a\": `cloud` must not be empty".into()),
        ]
    );
}

#[test]
fn bad_cluster_name() {
    let (line, col, msg) = one_error(&with_mesh(&cluster("EU_West", "a:1")));
    assert_eq!((line, col), (5, 8));
    assert!(
        msg.starts_with("cluster name \"EU_West\" is invalid: character 'E' is not allowed"),
        "{msg}"
    );
}

#[test]
fn duplicate_cluster_names() {
    let text = with_mesh(&format!("{}{}", cluster("a", "a:1"), cluster("a", "b:1")));
    let (line, col, msg) = one_error(&text);
    assert_eq!((line, col), (12, 8));
    assert_eq!(
        msg,
        "duplicate cluster name \"a\" (first defined on line 5)"
    );
}

#[test]
fn bad_bridge_addresses() {
    let cases = [
        ("a.example", "missing :port (write host:port)"),
        ("a.example:0", "port \"0\" is not a number from 1 to 65535"),
        (
            "a.example:70000",
            "port \"70000\" is not a number from 1 to 65535",
        ),
        (
            "::1:7443",
            "an IPv6 address needs brackets, as in [2001:db8::1]:7443",
        ),
        ("999.1.1.1:7443", "\"999.1.1.1\" is not an IPv4 address"),
        (
            "quic://a:1",
            "write host:port without a scheme (the bridge speaks QUIC over UDP)",
        ),
    ];
    for (addr, reason) in cases {
        let (line, col, msg) = one_error(&with_mesh(&cluster("a", addr)));
        assert_eq!((line, col), (8, 10), "{addr}");
        assert_eq!(
            msg,
            format!("cluster \"a\": bad bridge address {addr:?}: {reason}")
        );
    }
    // Accepted forms.
    for addr in [
        "[::1]:7443",
        "127.0.0.1:1",
        "bridge.eu-1.example.com:65535",
        "localhost:9",
    ] {
        Topology::parse(&with_mesh(&cluster("a", addr))).unwrap_or_else(|e| panic!("{addr}: {e}"));
    }
}

#[test]
fn duplicate_bridge_address() {
    let text = with_mesh(&format!(
        "{}{}[[link]]\nbetween = [\"a\", \"b\"]\ncost = 1\n",
        cluster("a", "h.example:1"),
        cluster("b", "H.example:1")
    ));
    let (line, _, msg) = one_error(&text);
    assert_eq!(line, 15);
    assert_eq!(
        msg,
        "cluster \"b\": bridge address \"H.example:1\" is already used by cluster \"a\""
    );
}

#[test]
fn bad_proxy_urls() {
    let cases = [
        ("events.example.com", "relative URL without a base"),
        (
            "ftp://events.example.com",
            "scheme \"ftp\" is not http or https",
        ),
        (
            "https://user:pw@events.example.com",
            "credentials do not belong in the topology file",
        ),
        (
            "https://events.example.com/?x=1",
            "a proxy address takes no query or fragment",
        ),
    ];
    for (url, reason) in cases {
        let text = with_mesh(&format!(
            "\n[[cluster]]\nname = \"a\"\nregion = \"r\"\ncloud = \"c\"\nbridge = \"a:1\"\nproxy = \"{url}\"\n"
        ));
        let (line, col, msg) = one_error(&text);
        assert_eq!((line, col), (9, 9), "{url}");
        assert!(
            msg.starts_with(&format!("cluster \"a\": bad proxy URL {url:?}: "))
                && msg.contains(reason),
            "{msg}"
        );
    }
}

fn two_clusters_and(links: &str) -> String {
    // Clusters a (lines 4-9) and b (lines 11-16); links from line 17.
    with_mesh(&format!(
        "{}{}{links}",
        cluster("a", "a:1"),
        cluster("b", "b:1")
    ))
}

#[test]
fn link_to_unknown_cluster_with_hint() {
    let (line, col, msg) = one_error(&two_clusters_and(
        "[[link]]\nbetween = [\"a\", \"bb\"]\ncost = 5\n[[link]]\nbetween = [\"a\", \"b\"]\ncost = 5\n",
    ));
    assert_eq!((line, col), (18, 17));
    assert_eq!(msg, "link names unknown cluster \"bb\"");
    let typo = include_str!("data/example.toml").replace(
        "between = [\"eu-west\", \"us-east\"]",
        "between = [\"eu-west\", \"us-eats\"]",
    );
    assert_eq!(
        one_error(&typo),
        (
            39,
            23,
            "link names unknown cluster \"us-eats\" (did you mean \"us-east\"?)".into()
        )
    );
    let (_, _, msg) = one_error(&two_clusters_and(
        "[[link]]\nbetween = [\"a\", \"zzzzz\"]\ncost = 5\n[[link]]\nbetween = [\"a\", \"b\"]\ncost = 5\n",
    ));
    assert_eq!(msg, "link names unknown cluster \"zzzzz\"");
}

#[test]
fn self_link() {
    let (line, col, msg) = one_error(&two_clusters_and(
        "[[link]]\nbetween = [\"a\", \"a\"]\ncost = 5\n[[link]]\nbetween = [\"a\", \"b\"]\ncost = 5\n",
    ));
    assert_eq!((line, col), (18, 11));
    assert_eq!(msg, "link joins cluster \"a\" to itself");
}

#[test]
fn duplicate_link_in_either_order() {
    let (line, _, msg) = one_error(&two_clusters_and(
        "[[link]]\nbetween = [\"a\", \"b\"]\ncost = 5\n[[link]]\nbetween = [\"b\", \"a\"]\ncost = 7\n",
    ));
    assert_eq!(line, 21);
    assert_eq!(
        msg,
        "duplicate link between \"a\" and \"b\" (first declared on line 18)"
    );
}

#[test]
fn link_arity() {
    let (line, _, msg) = one_error(&two_clusters_and(
        "[[link]]\nbetween = [\"a\", \"b\", \"a\"]\ncost = 5\n[[link]]\nbetween = [\"a\", \"b\"]\ncost = 5\n",
    ));
    assert_eq!(line, 18);
    assert_eq!(
        msg,
        "link `between` must name exactly two clusters, found 3"
    );
}

#[test]
fn bad_costs() {
    for (cost, msg) in [
        ("0", "link cost 0 is out of range: use an integer from 1 to 100000 (expected round-trip time in ms)"),
        ("-3", "link cost -3 is out of range: use an integer from 1 to 100000 (expected round-trip time in ms)"),
        ("100001", "link cost 100001 is out of range: use an integer from 1 to 100000 (expected round-trip time in ms)"),
        ("12.5", "[[link]] on line 17: `cost` must be an integer, found float"),
        ("\"12\"", "[[link]] on line 17: `cost` must be an integer, found string"),
    ] {
        let (line, col, got) = one_error(&two_clusters_and(&format!(
            "[[link]]\nbetween = [\"a\", \"b\"]\ncost = {cost}\n"
        )));
        assert_eq!((line, col), (19, 8), "{cost}");
        assert_eq!(got, msg);
    }
}

#[test]
fn missing_link_fields() {
    let es = errors(&two_clusters_and(
        "[[link]]\ncost = 5\n[[link]]\nbetween = [\"a\", \"b\"]\n",
    ));
    assert_eq!(
        es,
        vec![
            (
                17,
                1,
                "missing field `between` in [[link]] on line 17".into()
            ),
            (19, 1, "missing field `cost` in [[link]] on line 19".into()),
        ]
    );
}

#[test]
fn disconnected_mesh_names_the_cut_off_clusters() {
    // a-b linked, c-d linked, e alone: {c,d} and {e} are cut off from... the first
    // largest component, {a,b}.
    let text = with_mesh(&format!(
        "{}{}{}{}{}[[link]]\nbetween = [\"a\", \"b\"]\ncost = 1\n[[link]]\nbetween = [\"d\", \"c\"]\ncost = 1\n",
        cluster("a", "a:1"),
        cluster("b", "b:1"),
        cluster("c", "c:1"),
        cluster("d", "d:1"),
        cluster("e", "e:1"),
    ));
    assert_eq!(
        errors(&text),
        vec![
            (19, 8, "the mesh is not connected: clusters \"c\", \"d\" cannot reach clusters \"a\", \"b\" over the declared links".into()),
            (33, 8, "the mesh is not connected: cluster \"e\" cannot reach clusters \"a\", \"b\" over the declared links".into()),
        ]
    );
}

#[test]
fn a_single_cluster_needs_no_links() {
    let t = Topology::parse(&with_mesh(CLUSTER_A)).expect("valid");
    assert_eq!(t.cluster_count(), 1);
    assert_eq!(t.link_count(), 0);
}

fn policy(topics: &str, clusters: &str) -> String {
    two_clusters_and(&format!(
        "[[link]]\nbetween = [\"a\", \"b\"]\ncost = 1\n[[policy]]\ntopics = \"{topics}\"\nclusters = {clusters}\n"
    ))
}

#[test]
fn policy_naming_unknown_cluster() {
    let (line, col, msg) = one_error(&policy("orders.*", "[\"a\", \"c\"]"));
    assert_eq!((line, col), (22, 18));
    assert_eq!(msg, "policy for \"orders.*\" names unknown cluster \"c\"");
}

#[test]
fn policy_listing_a_cluster_twice() {
    let (line, col, msg) = one_error(&policy("orders.*", "[\"a\", \"a\"]"));
    assert_eq!((line, col), (22, 18));
    assert_eq!(msg, "policy for \"orders.*\" lists cluster \"a\" twice");
}

#[test]
fn bad_topic_patterns() {
    for (pattern, reason) in [
        (
            "or*ders",
            "`*` may only be the whole pattern or the last segment after a dot, as in `orders.*`",
        ),
        (
            "*.orders",
            "`*` may only be the whole pattern or the last segment after a dot, as in `orders.*`",
        ),
        (
            "orders*",
            "`*` may only be the whole pattern or the last segment after a dot, as in `orders.*`",
        ),
        (
            ".*",
            "the prefix before `.*` is empty (use `*` for every topic)",
        ),
        ("", "topic name \"\" is invalid"),
        ("has space", "topic name \"has space\" is invalid"),
    ] {
        let (line, col, msg) = one_error(&policy(pattern, "[\"a\"]"));
        assert_eq!((line, col), (21, 10), "{pattern}");
        let want = format!("bad topic pattern {pattern:?}: {reason}");
        assert!(msg.starts_with(&want), "{msg}\nwanted: {want}");
    }
}

#[test]
fn duplicate_policy_pattern() {
    let text = format!(
        "{}[[policy]]\ntopics = \"orders.*\"\nclusters = [\"b\"]\n",
        policy("orders.*", "[\"a\"]")
    );
    let (line, _, msg) = one_error(&text);
    assert_eq!(line, 24);
    assert_eq!(
        msg,
        "duplicate policy for topic pattern \"orders.*\" (first declared on line 21)"
    );
}

#[test]
fn every_problem_at_once_in_file_order() {
    let text = r#"[mesh]
name = ""

[[cluster]]
name = "eu-west"
region = "eu-west-1"
bridge = "bridge:0"
proxy = "ftp://x"

[[cluster]]
name = "eu-west"
region = "r"
cloud = "c"
bridge = "b:1"
proxy = "http://x"

[[cluster]]
name = "island"
region = "r"
cloud = "c"
bridge = "i:1"
proxy = "http://y"

[[link]]
between = ["eu-west", "eu-wset"]
cost = 0

[[policy]]
topics = "pay*"
clusters = ["nowhere"]
"#;
    let es = errors(text);
    let lines: Vec<usize> = es.iter().map(|e| e.0).collect();
    assert_eq!(lines, vec![2, 4, 7, 8, 11, 18, 25, 26, 29, 30], "{es:#?}");
    let kinds: Vec<K> = Topology::parse(text)
        .expect_err("invalid")
        .errors()
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert!(matches!(kinds[0], K::BadMeshName { .. }));
    assert!(matches!(kinds[1], K::MissingField { .. }));
    assert!(matches!(kinds[2], K::BadBridgeAddress { .. }));
    assert!(matches!(kinds[3], K::BadProxyUrl { .. }));
    assert!(matches!(kinds[4], K::DuplicateCluster { .. }));
    assert!(matches!(kinds[5], K::Disconnected { .. }));
    assert!(matches!(kinds[6], K::LinkUnknownCluster { .. }));
    assert!(matches!(kinds[7], K::BadCost { .. }));
    assert!(matches!(kinds[8], K::BadTopicPattern { .. }));
    assert!(matches!(kinds[9], K::PolicyUnknownCluster { .. }));
}

#[test]
fn render_prefixes_file_line_and_column() {
    let err = Topology::parse(&format!("[mesh]\nname = \"\"\n{CLUSTER_A}")).expect_err("invalid");
    assert_eq!(
        err.render("mesh.toml"),
        "mesh.toml:2:8: mesh name \"\" is invalid: it must not be empty\n"
    );
}

#[test]
fn load_reports_io_and_validation_errors() {
    let dir = std::env::temp_dir().join(format!("meshd-topology-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("missing.toml");
    assert!(matches!(
        Topology::load(&missing),
        Err(meshd_topology::LoadError::Io { .. })
    ));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[mesh]\nname = \"\"\n").expect("write");
    match Topology::load(&bad) {
        Err(meshd_topology::LoadError::Invalid { errors, .. }) => assert_eq!(errors.len(), 2),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, include_str!("data/example.toml")).expect("write");
    assert_eq!(Topology::load(&good).expect("valid").mesh(), "acme");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_panic_and_positions_inside_the_text_for_mangled_files() {
    let example = include_str!("data/example.toml");
    let mut texts: Vec<String> = Vec::new();
    // Every prefix (cut at every character boundary).
    for (i, _) in example.char_indices() {
        texts.push(example[..i].to_string());
    }
    // Every line deleted, and every line duplicated.
    let lines: Vec<&str> = example.lines().collect();
    for i in 0..lines.len() {
        let mut del = lines.clone();
        del.remove(i);
        texts.push(del.join("\n"));
        let mut dup = lines.clone();
        dup.insert(i, lines[i]);
        texts.push(dup.join("\n"));
    }
    // Some bytes replaced by characters that break things.
    for (i, _) in example.char_indices().step_by(7) {
        for c in ["\"", "[", "=", "é", "\n", "*", "0"] {
            let mut t = example.to_string();
            let end = example[i..]
                .chars()
                .next()
                .map_or(i, |ch| i + ch.len_utf8());
            t.replace_range(i..end, c);
            texts.push(t);
        }
    }
    let line_count = example.lines().count() + 2;
    let mut rejected = 0;
    for t in &texts {
        if let Err(e) = Topology::parse(t) {
            rejected += 1;
            assert!(!e.is_empty());
            for err in e.errors() {
                assert!(err.line <= line_count, "{err} in\n{t}");
                assert!(!err.message().is_empty());
            }
        }
    }
    assert!(rejected > texts.len() / 2, "{rejected} of {}", texts.len());
}
