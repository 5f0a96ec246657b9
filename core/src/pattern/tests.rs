//! Tests for pattern compile/match and the Matcher.

use super::*;
use serde_json::json;

fn m(p: Value, e: Value) -> bool {
    let pat = Pattern::compile(&p).unwrap_or_else(|e| panic!("compile {p}: {e}"));
    let single = pat.matches_value(&e);
    // The shared matcher must agree with the single-pattern evaluator.
    let mut mm = Matcher::new();
    mm.add(7, &pat);
    let multi = mm.matches_value(&e) == vec![7];
    assert_eq!(single, multi, "Pattern and Matcher disagree on {p} / {e}");
    let streamed = mm
        .matches_json(e.to_string().as_bytes())
        .expect("valid JSON")
        == vec![7];
    assert_eq!(
        single, streamed,
        "Pattern and Matcher::matches_json disagree on {p} / {e}"
    );
    single
}

fn bad(p: Value) -> PatternError {
    match Pattern::compile(&p) {
        Ok(_) => panic!("expected {p} to be rejected"),
        Err(e) => e,
    }
}

#[test]
fn exact_strings_numbers_bools_null() {
    assert!(m(json!({"type": ["a", "b"]}), json!({"type": "b"})));
    assert!(!m(json!({"type": ["a"]}), json!({"type": "A"})));
    assert!(m(json!({"n": [300]}), json!({"n": 300.0})));
    assert!(m(json!({"n": [3.0e2]}), json!({"n": 300})));
    assert!(m(json!({"n": [300.0]}), json!({"n": 3e2})));
    assert!(!m(json!({"n": [300]}), json!({"n": "300"})));
    assert!(!m(json!({"n": ["300"]}), json!({"n": 300})));
    assert!(m(json!({"n": [0]}), json!({"n": -0.0})));
    assert!(m(json!({"b": [true]}), json!({"b": true})));
    assert!(!m(json!({"b": [true]}), json!({"b": false})));
    assert!(m(json!({"x": [null]}), json!({"x": null})));
    assert!(!m(json!({"x": [null]}), json!({})));
    assert!(!m(json!({"x": [""]}), json!({"x": null})));
    assert!(m(json!({"x": [""]}), json!({"x": ""})));
    assert!(!m(json!({"x": ["a"]}), json!({"x": {"a": 1}})));
}

#[test]
fn empty_value_list_is_refused() {
    // As EventBridge: an empty array of values could never match.
    let e = bad(json!({"x": []}));
    assert_eq!(e.path, "x");
    assert!(e.message.contains("empty list"), "{e}");
    assert_eq!(bad(json!({"d": {"y": []}})).path, "d.y");
}

#[test]
fn dotted_keys_and_nesting_name_the_same_field() {
    // In the pattern.
    assert!(m(
        json!({"data.a.b": [1]}),
        json!({"data": {"a": {"b": 1}}})
    ));
    assert!(!m(
        json!({"data.a.b": [1]}),
        json!({"data": {"a": {"b": 2}}})
    ));
    // In the event.
    assert!(m(
        json!({"data": {"a": {"b": [1]}}}),
        json!({"data": {"a.b": 1}})
    ));
    assert!(m(
        json!({"data": {"a.b": [1]}}),
        json!({"data": {"a.b": 1}})
    ));
    assert!(m(
        json!({"data.a": {"b": [1]}}),
        json!({"data": {"a.b": 1}})
    ));
    // Both kinds of key in one event and one pattern.
    let e = json!({"data": {"a": {"c": 2}, "a.b": 1}});
    assert!(m(json!({"data": {"a.b": [1], "a": {"c": [2]}}}), e.clone()));
    assert!(!m(json!({"data": {"a.b": [1], "a": {"c": [3]}}}), e));
    // A dotted key next to a scalar of the same name: both values are that field's.
    let e = json!({"data": {"a": "x", "a.b": 1}});
    assert!(m(json!({"data": {"a": ["x"], "a.b": [1]}}), e.clone()));
    assert!(m(json!({"data.a.b": [{"exists": true}]}), e));
    // exists:false sees the dotted field.
    assert!(!m(
        json!({"data.a.b": [{"exists": false}]}),
        json!({"data": {"a.b": 1}})
    ));
    // Dotted keys inside arrays of objects keep array consistency.
    let e = json!({"data": {"l": [{"k.x": 1, "y": 2}, {"k.x": 3, "y": 4}]}});
    assert!(m(json!({"data": {"l": {"k.x": [1], "y": [2]}}}), e.clone()));
    assert!(!m(json!({"data": {"l": {"k": {"x": [1]}, "y": [4]}}}), e));
    // Keys with empty segments are literal.
    assert!(m(json!({"data": {"a.": [1]}}), json!({"data": {"a.": 1}})));
    assert!(!m(json!({"data": {"a.": [1]}}), json!({"data": {"a": 1}})));
    // Dots count towards the nesting limit.
    let deep = (0..MAX_DEPTH + 1)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(".");
    assert!(bad(json!({ deep: [1] })).message.contains("deeper"));
}

#[test]
fn eventbridge_envelope_names_alias_cloudevents_attributes() {
    // A pattern from AWS docs, unchanged, on the CloudEvent an EventBridge event maps to.
    let p = json!({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"],
                   "detail": {"state": ["running"]}});
    let e = json!({"source": "aws.ec2", "type": "EC2 Instance State-change Notification",
                   "data": {"state": "running", "instance-id": "i-1"}});
    assert!(m(p.clone(), e.clone()));
    let mut other = e.clone();
    other["data"]["state"] = json!("stopped");
    assert!(!m(p, other));
    // Only at the top, and not when the pattern names the attribute itself.
    assert!(!m(
        json!({"data": {"detail": ["x"]}}),
        json!({"data": {"data": "x"}})
    ));
    assert!(m(
        json!({"data": {"x": [1]}, "detail": [2]}),
        json!({"data": {"x": 1}, "detail": 2})
    ));
}

#[test]
fn nested_fields_and_arrays() {
    let p = json!({"data": {"price": [{"numeric": [">", 10]}]}});
    assert!(m(p.clone(), json!({"data": {"price": 11}})));
    assert!(!m(p.clone(), json!({"data": {"price": 10}})));
    assert!(m(p.clone(), json!({"data": {"price": [1, 2, 30]}})));
    assert!(!m(p, json!({"data": {"price": [1, 2]}})));
    assert!(m(json!({"r": ["x", "y"]}), json!({"r": ["a", "y"]})));
    assert!(m(
        json!({"a": {"b": ["x"]}}),
        json!({"a": [{"b": "z"}, {"b": ["q", "x"]}]})
    ));
}

#[test]
fn array_consistency() {
    let e = json!({"employees": [
        {"first": "John", "last": "Doe"},
        {"first": "Anna", "last": "Smith"}]});
    assert!(!m(
        json!({"employees": {"first": ["John"], "last": ["Smith"]}}),
        e.clone()
    ));
    assert!(m(
        json!({"employees": {"first": ["Anna"], "last": ["Smith"]}}),
        e.clone()
    ));
    assert!(m(
        json!({"employees": {"first": ["John"], "last": ["Doe"]}}),
        e.clone()
    ));
    // Nested arrays of objects.
    let e2 = json!({"a": [{"b": [{"c": 1, "d": 2}, {"c": 3, "d": 4}]}]});
    assert!(m(json!({"a": {"b": {"c": [1], "d": [2]}}}), e2.clone()));
    assert!(!m(json!({"a": {"b": {"c": [1], "d": [4]}}}), e2));
    // exists:false inside one element.
    let e3 = json!({"a": [{"b": "x", "c": 1}, {"b": "y"}]});
    assert!(!m(
        json!({"a": {"b": ["x"], "c": [{"exists": false}]}}),
        e3.clone()
    ));
    assert!(m(json!({"a": {"b": ["y"], "c": [{"exists": false}]}}), e3));
}

#[test]
fn prefix_suffix_and_ignore_case_variants() {
    assert!(m(
        json!({"s": [{"prefix": "us-"}]}),
        json!({"s": "us-east-1"})
    ));
    assert!(!m(
        json!({"s": [{"prefix": "us-"}]}),
        json!({"s": "eu-west-1"})
    ));
    assert!(!m(json!({"s": [{"prefix": "1"}]}), json!({"s": 12})));
    assert!(m(json!({"s": [{"prefix": ""}]}), json!({"s": "anything"})));
    assert!(m(json!({"f": [{"suffix": ".png"}]}), json!({"f": "a.png"})));
    assert!(!m(
        json!({"f": [{"suffix": ".png"}]}),
        json!({"f": "a.PNG"})
    ));
    assert!(m(
        json!({"f": [{"suffix": {"equals-ignore-case": ".png"}}]}),
        json!({"f": "a.PnG"})
    ));
    assert!(m(
        json!({"s": [{"prefix": {"equals-ignore-case": "US-"}}]}),
        json!({"s": "us-east"})
    ));
    assert!(!m(
        json!({"s": [{"prefix": {"equals-ignore-case": "US-"}}]}),
        json!({"s": "eu-us-"})
    ));
}

#[test]
fn equals_ignore_case_unicode() {
    assert!(m(
        json!({"n": [{"equals-ignore-case": "ALICE"}]}),
        json!({"n": "aLiCe"})
    ));
    assert!(m(
        json!({"n": [{"equals-ignore-case": "ÇA VA"}]}),
        json!({"n": "ça va"})
    ));
    assert!(m(
        json!({"n": [{"equals-ignore-case": "ΣΊΣΥΦΟΣ"}]}),
        json!({"n": "σίσυφοσ"})
    ));
    assert!(m(
        json!({"n": [{"equals-ignore-case": "Straße"}]}),
        json!({"n": "STRAßE"})
    ));
    assert!(!m(
        json!({"n": [{"equals-ignore-case": "alice"}]}),
        json!({"n": "alicee"})
    ));
    assert!(!m(
        json!({"n": [{"equals-ignore-case": "1"}]}),
        json!({"n": 1})
    ));
}

#[test]
fn wildcard_with_escapes() {
    let w = |p: &str, s: &str| m(json!({"k": [{"wildcard": p}]}), json!({"k": s}));
    assert!(w("*.png", "dir/a.png"));
    assert!(w("a*b*c", "abc"));
    assert!(w("a*b*c", "axxbyyc"));
    assert!(!w("a*b*c", "axxcyyb"));
    assert!(w("*", ""));
    assert!(w("abc", "abc"));
    assert!(!w("abc", "abcd"));
    assert!(w("a\\*b", "a*b"));
    assert!(!w("a\\*b", "axb"));
    assert!(w("a\\\\*", "a\\xyz"));
    assert!(w("*aa*aa*", "aaaa"));
    assert!(!w("*aa*aa*", "aaa"));
    assert!(!w("ab*ab", "aba"));
    assert!(bad(json!({"k": [{"wildcard": "a**b"}]}))
        .message
        .contains("**"));
    assert!(bad(json!({"k": [{"wildcard": "a\\nb"}]}))
        .message
        .contains("escape"));
    assert!(bad(json!({"k": [{"wildcard": "a\\"}]}))
        .message
        .contains("backslash"));
}

#[test]
fn wildcard_prefix_suffix_overlap() {
    // "ab*ab" needs at least four characters: prefix and suffix may not overlap.
    assert!(!m(
        json!({"k": [{"wildcard": "ab*ab"}]}),
        json!({"k": "ab"})
    ));
    assert!(m(
        json!({"k": [{"wildcard": "ab*ab"}]}),
        json!({"k": "abab"})
    ));
}

#[test]
fn anything_but_forms() {
    assert!(m(json!({"s": [{"anything-but": "a"}]}), json!({"s": "b"})));
    assert!(!m(json!({"s": [{"anything-but": "a"}]}), json!({"s": "a"})));
    assert!(
        !m(json!({"s": [{"anything-but": "a"}]}), json!({})),
        "absent field never matches anything-but"
    );
    assert!(!m(
        json!({"s": [{"anything-but": ["a", "b"]}]}),
        json!({"s": "b"})
    ));
    assert!(m(
        json!({"s": [{"anything-but": ["a", "b"]}]}),
        json!({"s": "c"})
    ));
    assert!(!m(
        json!({"n": [{"anything-but": [100, 200]}]}),
        json!({"n": 2e2})
    ));
    assert!(m(
        json!({"n": [{"anything-but": [100, 200]}]}),
        json!({"n": 300})
    ));
    assert!(m(json!({"n": [{"anything-but": 5}]}), json!({"n": 6})));
    assert!(!m(
        json!({"s": [{"anything-but": {"prefix": "init"}}]}),
        json!({"s": "initializing"})
    ));
    assert!(m(
        json!({"s": [{"anything-but": {"prefix": "init"}}]}),
        json!({"s": "running"})
    ));
    assert!(!m(
        json!({"s": [{"anything-but": {"suffix": ".txt"}}]}),
        json!({"s": "a.txt"})
    ));
    assert!(m(
        json!({"s": [{"anything-but": {"suffix": ".txt"}}]}),
        json!({"s": "a.png"})
    ));
    assert!(!m(
        json!({"s": [{"anything-but": {"wildcard": "*/lib/*"}}]}),
        json!({"s": "/usr/lib/x"})
    ));
    assert!(m(
        json!({"s": [{"anything-but": {"wildcard": "*/lib/*"}}]}),
        json!({"s": "/usr/bin/x"})
    ));
    assert!(!m(
        json!({"s": [{"anything-but": {"equals-ignore-case": ["A", "B"]}}]}),
        json!({"s": "b"})
    ));
    assert!(m(
        json!({"s": [{"anything-but": {"equals-ignore-case": "A"}}]}),
        json!({"s": "c"})
    ));
    // Arrays: matches if any element is not excluded.
    assert!(m(
        json!({"s": [{"anything-but": "a"}]}),
        json!({"s": ["a", "b"]})
    ));
    assert!(!m(
        json!({"s": [{"anything-but": "a"}]}),
        json!({"s": ["a", "a"]})
    ));
    assert!(bad(json!({"s": [{"anything-but": ["a", 1]}]}))
        .message
        .contains("only strings"));
    assert!(bad(json!({"s": [{"anything-but": []}]}))
        .path
        .contains("anything-but"));
    // An empty prefix or suffix would exclude everything: refused (as EventBridge).
    for op in ["prefix", "suffix"] {
        let e = bad(json!({"s": [{"anything-but": {op: ""}}]}));
        assert!(e.message.contains("must not be empty"), "{e}");
        assert!(bad(json!({"s": [{"anything-but": {op: ["a", ""]}}]}))
            .message
            .contains("must not be empty"));
    }
    // Wildcards past the complexity limit are refused.
    let ok = "a*".repeat(MAX_WILDCARDS);
    assert!(Pattern::compile(&json!({"s": [{"wildcard": ok}]})).is_ok());
    let too = "a*".repeat(MAX_WILDCARDS + 1);
    assert!(bad(json!({"s": [{"wildcard": too}]}))
        .message
        .contains("too complex"));
    assert!(bad(json!({"s": [{"anything-but": {"exists": true}}]}))
        .message
        .contains("unknown"));
}

#[test]
fn numeric_ranges() {
    let n = |r: Value, x: Value| m(json!({"x": [{"numeric": r}]}), json!({"x": x}));
    assert!(n(json!([">", 0, "<=", 5]), json!(5)));
    assert!(!n(json!([">", 0, "<=", 5]), json!(0)));
    assert!(n(json!([">", 0, "<=", 5]), json!(0.0001)));
    assert!(!n(json!([">", 0, "<=", 5]), json!(5.0001)));
    assert!(n(json!([">=", 0]), json!(0)));
    assert!(n(json!(["<", 0]), json!(-1e300)));
    assert!(!n(json!(["<", 0]), json!(0)));
    assert!(n(json!(["=", 3.0e2]), json!(300)));
    assert!(!n(json!(["=", 300]), json!("300")));
    assert!(n(json!(["<=", 5, ">=", 1]), json!(3)));
    assert!(n(json!([">", -1e308, "<", 1e308]), json!(0)));
    assert!(n(json!([">", 1.5, "<", 1.75]), json!(1.6)));
    assert!(!n(json!([">", 1.5, "<", 1.75]), json!(1.8)));
    assert!(bad(json!({"x": [{"numeric": [">", 5, "<", 1]}]}))
        .message
        .contains("empty range"));
    assert!(bad(json!({"x": [{"numeric": [">", 5, ">", 1]}]}))
        .message
        .contains("two lower"));
    assert!(bad(json!({"x": [{"numeric": ["!", 5]}]}))
        .message
        .contains("unknown numeric"));
    assert!(bad(json!({"x": [{"numeric": [">", "5"]}]}))
        .message
        .contains("expected a number"));
    assert!(bad(json!({"x": [{"numeric": [">"]}]})).path == "x[0].numeric");
}

#[test]
fn exists_true_false() {
    assert!(m(json!({"a": [{"exists": true}]}), json!({"a": 1})));
    assert!(m(json!({"a": [{"exists": true}]}), json!({"a": null})));
    assert!(!m(json!({"a": [{"exists": true}]}), json!({"b": 1})));
    assert!(
        !m(json!({"a": [{"exists": true}]}), json!({"a": {"c": 1}})),
        "exists only on leaves"
    );
    assert!(!m(json!({"a": [{"exists": true}]}), json!({"a": []})));
    assert!(m(json!({"a": [{"exists": false}]}), json!({"b": 1})));
    assert!(!m(json!({"a": [{"exists": false}]}), json!({"a": 1})));
    assert!(m(json!({"a": [{"exists": false}]}), json!({"a": []})));
    assert!(m(json!({"a": {"b": [{"exists": false}]}}), json!({"x": 1})));
    assert!(m(
        json!({"a": {"b": [{"exists": false}]}, "x": [1]}),
        json!({"x": 1})
    ));
    assert!(!m(
        json!({"a": {"b": [{"exists": false}]}, "x": [1]}),
        json!({"x": 1, "a": {"b": "q"}})
    ));
    assert!(m(json!({"a": ["v", {"exists": false}]}), json!({})));
    assert!(m(json!({"a": ["v", {"exists": false}]}), json!({"a": "v"})));
    assert!(!m(
        json!({"a": ["v", {"exists": false}]}),
        json!({"a": "w"})
    ));
}

#[test]
fn cidr_v4_v6_boundaries() {
    let c = |p: &str, ip: &str| m(json!({"ip": [{"cidr": p}]}), json!({"ip": ip}));
    assert!(c("10.0.0.0/24", "10.0.0.0"));
    assert!(c("10.0.0.0/24", "10.0.0.255"));
    assert!(!c("10.0.0.0/24", "10.0.1.0"));
    assert!(!c("10.0.0.0/24", "9.255.255.255"));
    assert!(c("0.0.0.0/0", "1.2.3.4"));
    assert!(!c("0.0.0.0/0", "::1"));
    assert!(c("1.2.3.4/32", "1.2.3.4"));
    assert!(c("1.2.3.4", "1.2.3.4"));
    assert!(!c("1.2.3.4/32", "1.2.3.5"));
    assert!(c("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert!(!c("2001:db8::/32", "2001:db9::"));
    assert!(c("::/0", "fe80::1"));
    assert!(!c("10.0.0.0/8", "not an ip"));
    assert!(!m(
        json!({"ip": [{"cidr": "10.0.0.0/8"}]}),
        json!({"ip": 10})
    ));
    assert!(bad(json!({"ip": [{"cidr": "10.0.0.0/33"}]}))
        .message
        .contains("prefix length"));
    assert!(bad(json!({"ip": [{"cidr": "10.0.0/8"}]}))
        .message
        .contains("invalid IP"));
    assert!(bad(json!({"ip": [{"cidr": "::/129"}]})).path == "ip[0].cidr");
}

#[test]
fn or_nested_with_and() {
    let p = json!({"source": ["s"], "$or": [
        {"a": ["1"], "b": ["2"]},
        {"c": {"$or": [{"d": ["x"]}, {"e": [{"prefix": "y"}]}]}}
    ]});
    assert!(m(p.clone(), json!({"source": "s", "a": "1", "b": "2"})));
    assert!(!m(p.clone(), json!({"source": "s", "a": "1"})));
    assert!(!m(p.clone(), json!({"source": "t", "a": "1", "b": "2"})));
    assert!(m(p.clone(), json!({"source": "s", "c": {"e": "yes"}})));
    assert!(m(p.clone(), json!({"source": "s", "c": {"d": "x"}})));
    assert!(!m(p, json!({"source": "s", "c": {"d": "y"}})));
    // Not an OR by event-ruler's rules: "$or" is then an ordinary field name.
    assert!(m(
        json!({"$or": [{"numeric": [">", 0]}, {"prefix": "a"}]}),
        json!({"$or": 5})
    ));
    assert!(m(
        json!({"$or": [{"numeric": [">", 0]}, {"prefix": "a"}]}),
        json!({"$or": "ab"})
    ));
    assert!(!m(
        json!({"$or": [{"numeric": [">", 0]}, {"prefix": "a"}]}),
        json!({"a": "ab"})
    ));
    assert!(m(json!({"$or": {"x": ["1"]}}), json!({"$or": {"x": "1"}})));
    assert_eq!(bad(json!({"$or": [{"a": ["1"]}]})).path, "$or[0].a");
    assert_eq!(
        bad(json!({"$or": [{"a": ["1"]}, {"b": "x"}]})).path,
        "$or[1].b"
    );
}

#[test]
fn malformed_patterns_name_the_path() {
    assert_eq!(bad(json!([1])).path, "$");
    assert_eq!(bad(json!({})).path, "$");
    assert_eq!(bad(json!({"data": {}})).path, "data");
    assert_eq!(bad(json!({"data": {"x": "str"}})).path, "data.x");
    assert_eq!(bad(json!({"data": {"x": [[1]]}})).path, "data.x[0]");
    let e = bad(json!({"data": {"x": ["a", {"regex": "."}]}}));
    assert_eq!(e.path, "data.x[1].regex");
    assert!(e.message.contains("unknown operator"));
    assert!(bad(json!({"x": [{"prefix": "a", "suffix": "b"}]}))
        .message
        .contains("exactly one"));
    assert!(bad(json!({"x": [{"prefix": 1}]}))
        .message
        .contains("string"));
    assert!(bad(json!({"x": [{"exists": "yes"}]}))
        .message
        .contains("true or false"));
    assert!(bad(json!({"x": [{"prefix": {"foo": "a"}}]})).path == "x[0].prefix");
    let too_many: Vec<Value> = (0..=MAX_VALUES).map(|i| json!(i)).collect();
    assert!(bad(json!({"x": too_many})).message.contains("more than"));
    let mut deep = json!({"leaf": [1]});
    for _ in 0..MAX_DEPTH + 1 {
        deep = json!({ "n": deep });
    }
    assert!(bad(deep).message.contains("deeper"));
    let mut fields = Map::new();
    for i in 0..=MAX_FIELDS {
        fields.insert(format!("f{i}"), json!([1]));
    }
    assert!(bad(Value::Object(fields)).message.contains("at most"));
    // $or explosion: 3 levels of 10-way $or = 1000 alternatives.
    let or10 = |inner: Value| {
        Value::Array(
            (0..10)
                .map(|i| json!({ format!("k{i}"): inner.clone() }))
                .collect(),
        )
    };
    let p = json!({"$or": or10(json!({"$or": or10(json!({"$or": or10(json!([1]))}))}))});
    assert!(bad(p).message.contains("alternatives"));
}

#[test]
fn event_view_and_cloudevent_matching() {
    use cloudevents::{EventBuilder, EventBuilderV10};
    let ev = EventBuilderV10::new()
        .id("1")
        .source("/s")
        .ty("order.created")
        .extension("region", "eu")
        .data("application/json", json!({"price": 12, "tags": ["a", "b"]}))
        .build()
        .expect("valid event");
    let v = Value::Object(event_view(&ev));
    assert_eq!(v["type"], "order.created");
    assert_eq!(v["region"], "eu");
    assert_eq!(v["data"]["price"], 12);
    let p = Pattern::compile(
        &json!({"type": ["order.created"], "region": [{"prefix": "e"}],
        "data": {"price": [{"numeric": [">", 10]}], "tags": ["b"]}}),
    )
    .expect("compiles");
    assert!(p.matches(&ev));
    assert!(p.matches_value(&v));
    let mut mm = Matcher::new();
    mm.add(1, &p);
    mm.add(
        2,
        &Pattern::compile(&json!({"type": ["other"]})).expect("compiles"),
    );
    assert_eq!(mm.matches(&ev), vec![1]);
    let miss =
        Pattern::compile(&json!({"data": {"price": [{"numeric": ["<", 10]}]}})).expect("compiles");
    assert!(!miss.matches(&ev));
}

#[test]
fn matcher_add_remove_replace() {
    let mut mm = Matcher::new();
    let a = Pattern::compile(&json!({"t": ["x"]})).expect("compiles");
    let b = Pattern::compile(&json!({"t": [{"prefix": "x"}]})).expect("compiles");
    mm.add(1, &a);
    mm.add(2, &b);
    let mut got = mm.matches_value(&json!({"t": "x"}));
    got.sort();
    assert_eq!(got, vec![1, 2]);
    assert!(mm.remove(1));
    assert!(!mm.remove(1));
    assert_eq!(mm.matches_value(&json!({"t": "x"})), vec![2]);
    mm.add(2, &a);
    assert_eq!(mm.matches_value(&json!({"t": "xy"})), Vec::<u64>::new());
    assert_eq!(mm.matches_value(&json!({"t": "x"})), vec![2]);
    assert_eq!(mm.len(), 1);
    mm.remove(2);
    assert!(mm.is_empty());
    assert_eq!(mm.stats().predicates, 0);
    // Same pattern matched through two $or branches is reported once.
    let o = Pattern::compile(&json!({"$or": [{"a": ["1"]}, {"b": ["2"]}]})).expect("compiles");
    mm.add(9, &o);
    assert_eq!(mm.matches_value(&json!({"a": "1", "b": "2"})), vec![9]);
}

/// A small deterministic PRNG so the randomized test needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn random_leaf(r: &mut Rng) -> Value {
    let words = ["a", "ab", "abc", "b", "ba", "Ab", "ABC"];
    let w = *r.pick(&words);
    match r.next() % 12 {
        0 => json!([w, *r.pick(&words)]),
        1 => json!([{"prefix": w}]),
        2 => json!([{"suffix": w}]),
        3 => json!([{"equals-ignore-case": w}]),
        4 => json!([{"wildcard": format!("{w}*")}]),
        5 => match r.next() % 3 {
            0 => json!([{"anything-but": w}]),
            1 => json!([{"anything-but": [w, *r.pick(&words)]}]),
            _ => json!([{"anything-but": [(r.next() % 10) as i64, 3]}]),
        },
        6 => json!([{"numeric": [">", (r.next() % 5) as i64, "<=", 5 + (r.next() % 5) as i64]}]),
        7 => json!([{"exists": r.next() % 2 == 0}]),
        8 => json!([(r.next() % 10) as i64, r.next() % 2 == 0]),
        9 => json!([{"prefix": {"equals-ignore-case": w}}]),
        10 => json!([null, w]),
        _ => json!([{"numeric": ["<", (r.next() % 10) as i64]}]),
    }
}

fn random_pattern(r: &mut Rng, depth: usize) -> Value {
    let keys = ["k1", "k2", "k3"];
    let mut obj = Map::new();
    let n = 1 + r.next() % 2;
    for _ in 0..n {
        let k = *r.pick(&keys);
        let v = if depth < 2 && r.next() % 3 == 0 {
            random_pattern(r, depth + 1)
        } else {
            random_leaf(r)
        };
        obj.insert(k.to_string(), v);
    }
    if depth < 1 && r.next() % 5 == 0 {
        obj.insert(
            "$or".into(),
            json!([random_pattern(r, depth + 1), random_pattern(r, depth + 1)]),
        );
    }
    Value::Object(obj)
}

fn random_value(r: &mut Rng, depth: usize) -> Value {
    let words = ["a", "ab", "abc", "b", "ba", "Ab", "ABC", "x"];
    match r.next() % 9 {
        0 | 1 => json!(*r.pick(&words)),
        2 => json!((r.next() % 10) as i64),
        3 => json!((r.next() % 100) as f64 / 10.0),
        4 => Value::Null,
        5 if depth < 3 => Value::Array(
            (0..r.next() % 3)
                .map(|_| random_value(r, depth + 1))
                .collect(),
        ),
        6 | 7 if depth < 3 => random_event(r, depth + 1),
        _ => json!(r.next() % 2 == 0),
    }
}

fn random_event(r: &mut Rng, depth: usize) -> Value {
    let keys = ["k1", "k2", "k3", "k4"];
    let mut obj = Map::new();
    for k in keys {
        if r.next() % 3 != 0 {
            obj.insert(k.to_string(), random_value(r, depth));
        }
    }
    Value::Object(obj)
}

#[test]
fn matcher_agrees_with_pattern_on_random_data() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut mm = Matcher::new();
    let mut live: Vec<(u64, Pattern)> = Vec::new();
    for id in 0..300u64 {
        let pv = random_pattern(&mut r, 0);
        let Ok(p) = Pattern::compile(&pv) else {
            continue;
        };
        mm.add(id, &p);
        live.push((id, p));
    }
    let mut checks = 0;
    let mut total = 0;
    for round in 0..4 {
        for _ in 0..500 {
            let e = random_event(&mut r, 0);
            let mut got = mm.matches_value(&e);
            got.sort();
            let want: Vec<u64> = live
                .iter()
                .filter(|(_, p)| p.matches_value(&e))
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(got, want, "round {round}, event {e}");
            let mut streamed = mm
                .matches_json(e.to_string().as_bytes())
                .expect("valid JSON");
            streamed.sort();
            assert_eq!(streamed, want, "matches_json, round {round}, event {e}");
            checks += 1;
            total += want.len();
        }
        // Remove a third, add new ones.
        let mut keep = Vec::new();
        for (id, p) in live.drain(..) {
            if r.next() % 3 == 0 {
                assert!(mm.remove(id));
            } else {
                keep.push((id, p));
            }
        }
        live = keep;
        for id in 0..100u64 {
            let id = 1000 * (round + 1) + id;
            if let Ok(p) = Pattern::compile(&random_pattern(&mut r, 0)) {
                mm.add(id, &p);
                live.push((id, p));
            }
        }
    }
    assert_eq!(checks, 2000);
    eprintln!("random: {total} matches over {checks} events");
    // The data must exercise matching, not just agree on "nothing matches".
    assert!(total > 2000, "only {total} matches");
    assert_eq!(mm.len(), live.len());
}

#[test]
fn hostile_inputs_do_not_panic() {
    // Deeply nested event arrays are cut off, not followed.
    let mut v = json!("x");
    for _ in 0..200 {
        v = json!([v]);
    }
    let p = Pattern::compile(&json!({"a": ["x"]})).expect("compiles");
    assert!(!p.matches_value(&json!({ "a": v.clone() })));
    let mut mm = Matcher::new();
    mm.add(1, &p);
    assert!(mm.matches_value(&json!({ "a": v })).is_empty());
    // Pathological wildcard on a long string stays quick (no backtracking explosion).
    let w =
        Pattern::compile(&json!({"a": [{"wildcard": "*a*a*a*a*a*a*a*a*b"}]})).expect("compiles");
    let long = "a".repeat(20_000);
    let start = std::time::Instant::now();
    assert!(!w.matches_value(&json!({ "a": long })));
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    // Huge numbers are rejected or handled.
    assert!(Pattern::compile(&json!({"a": [{"numeric": [">", 1e308]}]})).is_ok());
    assert!(!m(
        json!({"a": [{"numeric": [">", 1e308]}]}),
        json!({"a": 1e307})
    ));
    // Non-object events match nothing that needs a field.
    assert!(!p.matches_value(&json!([1, 2])));
}

#[test]
fn many_prefix_lengths_use_the_trie_and_agree() {
    // More distinct prefix/suffix lengths than the per-length probe handles.
    let word = "abcdefghijklmnopqrstuvwxyz";
    let mut mm = Matcher::new();
    let mut pats = Vec::new();
    for len in 1..=20usize {
        for (k, op) in ["prefix", "suffix"].iter().enumerate() {
            let lit = if *op == "prefix" {
                &word[..len]
            } else {
                &word[word.len() - len..]
            };
            let p = Pattern::compile(&json!({"s": [{ *op: lit }]})).expect("compiles");
            let id = (len * 2 + k) as u64;
            mm.add(id, &p);
            pats.push((id, p));
        }
    }
    for s in [word, "abc", "xyz", "abcx", "qrstuvwxyz", ""] {
        let e = json!({ "s": s });
        let mut got = mm.matches_value(&e);
        got.sort();
        let want: Vec<u64> = pats
            .iter()
            .filter(|(_, p)| p.matches_value(&e))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(got, want, "value {s}");
    }
    assert_eq!(mm.matches_value(&json!({ "s": word })).len(), 40);
    for (id, _) in &pats {
        assert!(mm.remove(*id));
    }
    assert!(mm.matches_value(&json!({ "s": word })).is_empty());
}

#[test]
fn anything_but_index_with_many_exclusions() {
    let mut mm = Matcher::new();
    for id in 0..40u64 {
        let v = if id < 30 { "x" } else { "y" };
        mm.add(
            id,
            &Pattern::compile(&json!({"s": [{"anything-but": [v, "z"]}]})).expect("compiles"),
        );
    }
    let mut got = mm.matches_value(&json!({"s": "x"}));
    got.sort();
    assert_eq!(got, (30..40).collect::<Vec<u64>>());
    assert!(mm.matches_value(&json!({"s": "z"})).is_empty());
    assert_eq!(mm.matches_value(&json!({"s": "w"})).len(), 40);
    assert_eq!(mm.matches_value(&json!({"s": 1})).len(), 40);
    for id in 0..40u64 {
        mm.remove(id);
    }
    assert!(mm.matches_value(&json!({"s": "w"})).is_empty());
}

#[test]
fn matches_json_streams_and_rejects_bad_json() {
    let mut mm = Matcher::new();
    mm.add(
        1,
        &Pattern::compile(&json!({"a": {"b": ["x"]}})).expect("compiles"),
    );
    assert_eq!(
        mm.matches_json(br#"{"z": [1, {"q": 2}], "a": {"b": "x"}}"#)
            .expect("valid"),
        vec![1]
    );
    assert_eq!(
        mm.matches_json(br#"{"a": {"b": "\u0078"}}"#)
            .expect("valid"),
        vec![1]
    );
    assert!(mm
        .matches_json(br#"[{"a": {"b": "x"}}]"#)
        .expect("valid")
        .is_empty());
    assert!(mm.matches_json(br#"{"a": {"b": "x"}"#).is_err());
    assert!(mm.matches_json(br#"{"a": {"b": "x"}} trailing"#).is_err());
    for bad_json in [
        &br#"{"a": {"b": tru}}"#[..],
        br#"{"a": {"b": 1.2.3}}"#,
        br#"{"a": {"b": "x}}"#,
        br#"{"z": [1, 2}, "a": {"b": "x"}}"#,
        br#"{"z": {"q": ]}, "a": {"b": "x"}}"#,
        br#"{"a" {"b": "x"}}"#,
        br#"{"a": {"b": "x",}}"#,
        b"{\"a\": {\"b\": \"x\ty\"}}",
        b"",
        b"   ",
    ] {
        assert!(
            mm.matches_json(bad_json).is_err(),
            "{}",
            String::from_utf8_lossy(bad_json)
        );
    }
    // Deep nesting in a skipped part is refused, not recursed into.
    let deep = format!(
        r#"{{"z": {}{}, "a": {{"b": "x"}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(mm.matches_json(deep.as_bytes()).is_err());
    let ok = format!(
        r#"{{"z": {}{}, "a": {{"b": "x"}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(mm.matches_json(ok.as_bytes()).expect("valid"), vec![1]);
    // Numbers and literals at a named field.
    mm.add(
        2,
        &Pattern::compile(&json!({"n": [3e2], "t": [true], "z": [null]})).expect("compiles"),
    );
    assert_eq!(
        mm.matches_json(br#"{"n": 300.0, "t": true, "z": null}"#)
            .expect("valid"),
        vec![2]
    );
    assert!(mm
        .matches_json(br#"{"n": 301, "t": true, "z": null}"#)
        .expect("valid")
        .is_empty());
}
