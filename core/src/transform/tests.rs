//! Tests of the transform kinds, the template quoting rules, limits and error fields.

use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event};
use serde_json::{json, Value};

use super::*;

fn ev() -> Event {
    crate::event::parse_structured(
        br#"{"specversion":"1.0","id":"42","source":"/orders/eu","type":"order.created",
            "region":"eu","n":3,"dataschema":"https://example.com/order.json",
            "datacontenttype":"application/json",
            "data":{"order":{"id":"o-1","total":12.5,"items":[{"sku":"a"},{"sku":"b"}]},
                    "name":"Ann \"The\" Tester\nline2 \u00e9\u4e2d\ud83d\ude00","count":7,
                    "flag":true,"nothing":null}}"#,
    )
    .unwrap()
}

fn spec(json: &str) -> TransformSpec {
    serde_json::from_str(json).unwrap()
}

fn compile(json: &str) -> Result<Transform, TransformError> {
    Transform::compile(&spec(json))
}

fn raw(json: &str, e: &Event) -> (String, Vec<u8>) {
    match compile(json).unwrap().apply(e).unwrap() {
        TransformOutput::Raw { content_type, body } => (content_type, body),
        TransformOutput::Event(_) => panic!("expected raw output for {json}"),
    }
}

fn raw_json(json: &str, e: &Event) -> Value {
    let (ct, body) = raw(json, e);
    assert_eq!(ct, JSON_CONTENT_TYPE);
    serde_json::from_slice(&body).unwrap()
}

fn raw_text(json: &str, e: &Event) -> String {
    let (ct, body) = raw(json, e);
    assert_eq!(ct, TEXT_CONTENT_TYPE);
    String::from_utf8(body).unwrap()
}

fn out_event(json: &str, e: &Event) -> Event {
    match compile(json).unwrap().apply(e).unwrap() {
        TransformOutput::Event(e) => e,
        TransformOutput::Raw { .. } => panic!("expected event output for {json}"),
    }
}

fn err_field(json: &str) -> (String, String) {
    match compile(json) {
        Err(TransformError::Invalid { field, message }) => (field, message),
        other => panic!("expected an invalid-spec error for {json}, got {other:?}"),
    }
}

/// A template transform with the test paths, as a raw body.
fn tpl(template: &str) -> String {
    let spec = json!({"template":{
        "paths":{"name":"$.data.name","count":"$.data.count","order":"$.data.order",
                 "items":"$.data.order.items","flag":"$.data.flag","nothing":"$.data.nothing",
                 "missing":"$.data.nope","skus":"$.data.order.items[*].sku","type":"$.type"},
        "template": template, "as":"raw"}});
    let t = Transform::compile(&serde_json::from_value(spec).unwrap()).unwrap();
    match t.apply(&ev()).unwrap() {
        TransformOutput::Raw { body, .. } => String::from_utf8(body).unwrap(),
        TransformOutput::Event(_) => panic!("raw expected"),
    }
}

fn tpl_json(template: &str) -> Value {
    serde_json::from_str(&tpl(template)).unwrap()
}

const NAME: &str = "Ann \"The\" Tester\nline2 \u{e9}\u{4e2d}\u{1F600}";

#[test]
fn spec_json_shape() {
    assert_eq!(spec(r#"{"original":{}}"#), TransformSpec::default());
    let s = spec(r#"{"partial":{"path":"$.data","as":"raw"}}"#);
    assert_eq!(
        s,
        TransformSpec::Partial(PartialSpec {
            path: "$.data".into(),
            output: Some(OutputMode::Raw)
        })
    );
    // Round trip keeps the externally tagged lowercase form.
    let back = serde_json::to_value(&s).unwrap();
    assert_eq!(back, json!({"partial":{"path":"$.data","as":"raw"}}));
    // Unknown kinds and unknown fields are refused.
    assert!(serde_json::from_str::<TransformSpec>(r#"{"jq":{}}"#).is_err());
    assert!(serde_json::from_str::<TransformSpec>(r#"{"original":{"x":1}}"#).is_err());
    assert!(
        serde_json::from_str::<TransformSpec>(r#"{"partial":{"path":"$","as":"xml"}}"#).is_err()
    );
    let two = serde_json::from_str::<TransformSpec>(
        r#"{"partial":{"path":"$.data"},"template":{"template":"x"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        two.contains("exactly one kind") && two.contains("partial, template"),
        "{two}"
    );
    let none = serde_json::from_str::<TransformSpec>("{}")
        .unwrap_err()
        .to_string();
    assert!(none.contains("got none"), "{none}");
    let unknown = serde_json::from_str::<TransformSpec>(r#"{"jq":{}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("unknown transform kind \"jq\""),
        "{unknown}"
    );
    let inner = serde_json::from_str::<TransformSpec>(r#"{"partial":{"paht":"$"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        inner.starts_with("partial: ") && inner.contains("paht"),
        "{inner}"
    );
    // constant value null is kept as a present value.
    let s = spec(r#"{"constant":{"value":null}}"#);
    assert_eq!(
        s,
        TransformSpec::Constant(ConstantSpec {
            value: Some(Value::Null),
            ..Default::default()
        })
    );
}

#[test]
fn original_event_and_raw() {
    let e = ev();
    assert_eq!(out_event(r#"{"original":{}}"#, &e), e);
    let (ct, body) = raw(r#"{"original":{"as":"raw"}}"#, &e);
    assert_eq!(ct, "application/cloudevents+json");
    let back = crate::event::parse_structured(&body).unwrap();
    assert_eq!(back, e);
}

#[test]
fn data_raw_body() {
    let e = ev();
    let (ct, body) = raw(r#"{"data":{}}"#, &e);
    assert_eq!(ct, "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["order"]["id"], "o-1");

    let headers = [
        ("ce-id", &b"1"[..]),
        ("ce-source", b"/s"),
        ("ce-type", b"t"),
        ("ce-specversion", b"1.0"),
    ];
    let text = crate::event::parse_binary(headers, Some("text/csv"), b"a,b\n1,2").unwrap();
    assert_eq!(
        raw(r#"{"data":{"as":"raw"}}"#, &text),
        ("text/csv".to_string(), b"a,b\n1,2".to_vec())
    );
    let bin = crate::event::parse_binary(headers, Some("image/png"), &[0x89, 0, 0xff]).unwrap();
    assert_eq!(
        raw(r#"{"data":{}}"#, &bin),
        ("image/png".to_string(), vec![0x89, 0, 0xff])
    );
    let none = crate::event::parse_binary(headers, None, b"").unwrap();
    assert_eq!(raw(r#"{"data":{}}"#, &none).1, Vec::<u8>::new());

    let (field, msg) = err_field(r#"{"data":{"as":"event"}}"#);
    assert_eq!(field, "transform.data.as");
    assert!(msg.contains("original"), "{msg}");
}

#[test]
fn partial_selects() {
    let e = ev();
    assert_eq!(
        raw_json(r#"{"partial":{"path":"$.data.order.id","as":"raw"}}"#, &e),
        json!("o-1")
    );
    assert_eq!(
        raw_json(r#"{"partial":{"path":"$.type","as":"raw"}}"#, &e),
        json!("order.created")
    );
    assert_eq!(
        raw_json(r#"{"partial":{"path":"$.region","as":"raw"}}"#, &e),
        json!("eu")
    );
    // Several nodes: an array; none: null.
    assert_eq!(
        raw_json(
            r#"{"partial":{"path":"$.data.order.items[*].sku","as":"raw"}}"#,
            &e
        ),
        json!(["a", "b"])
    );
    assert_eq!(
        raw_json(r#"{"partial":{"path":"$.data.nope","as":"raw"}}"#, &e),
        Value::Null
    );
    // Filters work (RFC 9535).
    assert_eq!(
        raw_json(
            r#"{"partial":{"path":"$.data.order.items[?@.sku=='b']","as":"raw"}}"#,
            &e
        ),
        json!({"sku":"b"})
    );
}

#[test]
fn partial_as_event_keeps_attributes() {
    let e = ev();
    let out = out_event(r#"{"partial":{"path":"$.data.order"}}"#, &e);
    assert_eq!(out.id(), "42");
    assert_eq!(out.ty(), "order.created");
    assert_eq!(out.source().as_str(), "/orders/eu");
    assert_eq!(
        out.extension("region"),
        Some(&ExtensionValue::String("eu".into()))
    );
    assert_eq!(out.datacontenttype(), Some("application/json"));
    assert_eq!(out.dataschema(), None, "the old schema no longer applies");
    assert_eq!(
        out.data(),
        Some(&Data::Json(
            json!({"id":"o-1","total":12.5,"items":[{"sku":"a"},{"sku":"b"}]})
        ))
    );
}

#[test]
fn partial_bad_paths_name_the_field() {
    let (field, msg) = err_field(r#"{"partial":{"path":"data.order"}}"#);
    assert_eq!(field, "transform.partial.path");
    assert!(msg.contains("JSONPath"), "{msg}");
    let long = format!("$.{}", "a".repeat(MAX_PATH_BYTES));
    let (field, msg) = err_field(&json!({"partial":{"path":long}}).to_string());
    assert_eq!(field, "transform.partial.path");
    assert!(msg.contains("at most 512"), "{msg}");
    let deep = format!("$[?{}@.a{}]", "(".repeat(40), ")".repeat(40));
    let (_, msg) = err_field(&json!({"partial":{"path":deep}}).to_string());
    assert!(msg.contains("nests"), "{msg}");
    // Brackets inside quoted names do not count as nesting.
    assert!(compile(&json!({"partial":{"path":"$['(((((((((((((((((((((']"}}).to_string()).is_ok());
}

#[test]
fn constants() {
    let e = ev();
    assert_eq!(
        raw_json(r#"{"constant":{"value":{"a":[1,"x"]},"as":"raw"}}"#, &e),
        json!({"a":[1,"x"]})
    );
    assert_eq!(
        raw_json(r#"{"constant":{"value":null,"as":"raw"}}"#, &e),
        Value::Null
    );
    assert_eq!(
        raw_text(r#"{"constant":{"text":"ping","as":"raw"}}"#, &e),
        "ping"
    );
    let out = out_event(r#"{"constant":{"text":"ping"}}"#, &e);
    assert_eq!(out.datacontenttype(), Some(TEXT_CONTENT_TYPE));
    assert_eq!(out.data(), Some(&Data::String("ping".into())));
    assert_eq!(out.id(), "42");

    assert_eq!(err_field(r#"{"constant":{}}"#).0, "transform.constant");
    assert_eq!(
        err_field(r#"{"constant":{"value":1,"text":"x"}}"#).0,
        "transform.constant"
    );
    let big = "x".repeat(MAX_OUTPUT_BYTES + 1);
    let (field, msg) = err_field(&json!({"constant":{"text":big}}).to_string());
    assert_eq!(field, "transform.constant");
    assert!(msg.contains("at most"), "{msg}");
}

#[test]
fn template_strings_outside_quotes_are_json_strings() {
    let v = tpl_json(r#"{"name": <name>, "type": <type>}"#);
    assert_eq!(v["name"], NAME);
    assert_eq!(v["type"], "order.created");
}

#[test]
fn template_strings_inside_quotes_are_escaped() {
    let v = tpl_json(r#"{"msg": "hello <name>!", "t": "<type>"}"#);
    assert_eq!(v["msg"], format!("hello {NAME}!"));
    assert_eq!(v["t"], "order.created");
    // The raw text has the quote and newline escaped, the non-ASCII kept.
    let s = tpl(r#"{"msg": "<name>"}"#);
    assert!(s.contains(r#"Ann \"The\" Tester\nline2 é中😀"#), "{s}");
}

#[test]
fn template_escaped_quotes_in_template_keep_string_context() {
    // `\"` inside a JSON string does not end it: <name> is still inside the string.
    let v = tpl_json(r#"{"msg": "instance \"<type>\" is \\ <count>"}"#);
    assert_eq!(v["msg"], "instance \"order.created\" is \\ 7");
}

#[test]
fn template_numbers_bools_null() {
    let v = tpl_json(
        r#"{"n": <count>, "s": "<count>", "f": <flag>, "z": <nothing>, "zs": "[<nothing>]"}"#,
    );
    assert_eq!(v, json!({"n":7,"s":"7","f":true,"z":null,"zs":"[null]"}));
}

#[test]
fn template_objects_and_arrays() {
    let v = tpl_json(r#"{"order": <order>, "skus": <skus>, "items": [<items>, 1]}"#);
    assert_eq!(v["order"]["id"], "o-1");
    assert_eq!(v["skus"], json!(["a", "b"]));
    assert_eq!(v["items"][0], json!([{"sku":"a"},{"sku":"b"}]));
    // Inside a string an object or array loses its internal quotes, as EventBridge does.
    let v = tpl_json(r#"{"o": "order=<order>", "s": "skus <skus>"}"#);
    assert_eq!(v["o"], "order={id:o-1,items:[{sku:a},{sku:b}],total:12.5}");
    assert_eq!(v["s"], "skus [a,b]");
    // A value whose strings hold quotes and backslashes still renders valid JSON.
    let e = crate::event::parse_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t",
            "data":{"o":{"q":"a\"b\\c"}}}"#,
    )
    .unwrap();
    let t = compile(
        r#"{"template":{"paths":{"o":"$.data.o"},"template":"{\"s\": \"<o>\"}","as":"raw"}}"#,
    )
    .unwrap();
    let TransformOutput::Raw { body, .. } = t.apply(&e).unwrap() else {
        panic!("raw expected")
    };
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["s"], "{q:a\\b\\\\c}");
}

#[test]
fn template_missing_paths() {
    // Outside quotes: an empty string (as EventBridge); inside quotes: nothing.
    let v = tpl_json(r#"{"m": <missing>, "s": "[<missing>]", "l": [<missing>]}"#);
    assert_eq!(v, json!({"m":"","s":"[]","l":[""]}));
    // Text: nothing.
    assert_eq!(tpl("a<missing>b"), "ab");
}

#[test]
fn template_text_inserts_as_is() {
    assert_eq!(
        tpl("order <type> x<count> \"<flag>\" <skus>"),
        "order order.created x7 \"true\" [a,b]"
    );
    assert_eq!(tpl("<name>"), NAME);
    // Lone brackets and brackets around what cannot be a name are literal text.
    assert_eq!(tpl("</b> 1 < 2 <type"), "</b> 1 < 2 <type");
    // `<` and `>` cannot be escaped (as EventBridge): an undefined <name> is refused,
    // in text templates and inside JSON strings too.
    for t in ["<b>bold", "{\"a\": \"<b>\"}"] {
        let (field, msg) =
            err_field(&json!({"template":{"paths":{"k":"$.type"},"template":t}}).to_string());
        assert_eq!(field, "transform.template.template");
        assert!(msg.contains("<b>"), "{msg}");
    }
}

#[test]
fn template_explicit_format() {
    // A JSON string template (EventBridge's "Simple string").
    let v: Value =
        serde_json::from_str(&tpl_with(r#""instance <name> is <count>""#, Some("json"))).unwrap();
    assert_eq!(v, json!(format!("instance {NAME} is 7")));
    // A lone placeholder as JSON is the value as JSON.
    assert_eq!(tpl_with("<count>", Some("json")), "7");
    assert_eq!(tpl_with("<type>", Some("json")), "\"order.created\"");
    // Text even though it starts with a brace.
    assert_eq!(tpl_with("{<type>}", Some("text")), "{order.created}");
}

fn tpl_with(template: &str, format: Option<&str>) -> String {
    let mut spec = json!({"template":{"paths":{"name":"$.data.name","count":"$.data.count",
        "type":"$.type"},"template":template,"as":"raw"}});
    if let Some(f) = format {
        spec["template"]["format"] = json!(f);
    }
    let t = Transform::compile(&serde_json::from_value(spec).unwrap()).unwrap();
    match t.apply(&ev()).unwrap() {
        TransformOutput::Raw { body, .. } => String::from_utf8(body).unwrap(),
        TransformOutput::Event(_) => panic!("raw expected"),
    }
}

#[test]
fn template_reserved_variables() {
    let v = tpl_json(r#"{"e": <meshd.event>, "full": <meshd.event.json>, "s": "<meshd.event>"}"#);
    assert_eq!(v["e"]["id"], "42");
    assert!(v["e"].get("data").is_none(), "meshd.event has no data");
    assert_eq!(v["full"]["data"]["count"], 7);
    // Inside a string it loses its quotes, as EventBridge's <aws.events.event> would.
    assert!(
        v["s"].as_str().unwrap().contains("type:order.created"),
        "{}",
        v["s"]
    );
}

#[test]
fn template_as_event_json_and_text() {
    let e = ev();
    let out = out_event(
        r#"{"template":{"paths":{"t":"$.type"},"template":"{\"kind\": <t>}"}}"#,
        &e,
    );
    assert_eq!(
        out.data(),
        Some(&Data::Json(json!({"kind":"order.created"})))
    );
    assert_eq!(out.datacontenttype(), Some("application/json"));
    assert_eq!(out.id(), "42");
    let out = out_event(
        r#"{"template":{"paths":{"t":"$.type"},"template":"kind <t>"}}"#,
        &e,
    );
    assert_eq!(out.data(), Some(&Data::String("kind order.created".into())));
    assert_eq!(out.datacontenttype(), Some(TEXT_CONTENT_TYPE));
}

#[test]
fn template_invalid_specs() {
    let (field, msg) = err_field(r#"{"template":{"paths":{"k":"$.type"},"template":"{<k>: 1}"}}"#);
    assert_eq!(field, "transform.template.template");
    assert!(msg.contains("object keys"), "{msg}");
    let (field, msg) =
        err_field(r#"{"template":{"paths":{"k":"$.type"},"template":"{\"a\": <kk>}"}}"#);
    assert_eq!(field, "transform.template.template");
    assert!(msg.contains("<kk>"), "{msg}");
    let (field, _) = err_field(r#"{"template":{"paths":{"k":"$.type"},"template":"{\"a\": <k>"}}"#);
    assert_eq!(field, "transform.template.template");
    let (field, _) = err_field(r#"{"template":{"paths":{"k":"type"},"template":"<k>"}}"#);
    assert_eq!(field, "transform.template.paths.k");
    let (field, msg) =
        err_field(r#"{"template":{"paths":{"meshd.event":"$.type"},"template":"x"}}"#);
    assert_eq!(field, "transform.template.paths");
    assert!(msg.contains("reserved"), "{msg}");
    assert_eq!(
        err_field(r#"{"template":{"paths":{"":"$.type"},"template":"x"}}"#).0,
        "transform.template.paths"
    );
    assert_eq!(
        err_field(r#"{"template":{"template":""}}"#).0,
        "transform.template.template"
    );
    let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    let (_, msg) = err_field(&json!({"template":{"template":big}}).to_string());
    assert!(msg.contains("8192"), "{msg}");
    let many: serde_json::Map<String, Value> = (0..=MAX_TEMPLATE_PATHS)
        .map(|i| (format!("v{i}"), json!("$.type")))
        .collect();
    let (field, msg) = err_field(&json!({"template":{"paths":many,"template":"x"}}).to_string());
    assert_eq!(field, "transform.template.paths");
    assert!(msg.contains("100"), "{msg}");
    assert!(serde_json::from_str::<TransformSpec>(
        r#"{"template":{"template":"x","format":"xml"}}"#
    )
    .is_err());
}

#[test]
fn output_limit_enforced_at_apply() {
    let big = "y".repeat(100 * 1024);
    let e = crate::event::parse_structured(
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"big":big}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    // One copy fits, three do not.
    let one = compile(r#"{"template":{"paths":{"b":"$.data.big"},"template":"<b>"}}"#).unwrap();
    assert!(one.apply(&e).is_ok());
    let three =
        compile(r#"{"template":{"paths":{"b":"$.data.big"},"template":"<b><b><b>"}}"#).unwrap();
    assert!(matches!(
        three.apply(&e),
        Err(TransformError::OutputTooLarge {
            limit: MAX_OUTPUT_BYTES,
            ..
        })
    ));
    // A template repeating the whole event many times stops at the limit.
    let t = format!("[{}1]", "<meshd.event.json>,".repeat(400));
    let many =
        Transform::compile(&serde_json::from_value(json!({"template":{"template":t}})).unwrap())
            .unwrap();
    assert!(matches!(
        many.apply(&e),
        Err(TransformError::OutputTooLarge { .. })
    ));
    let p = compile(r#"{"partial":{"path":"$..*"}}"#).unwrap();
    let big3 = crate::event::parse_structured(
        json!({"specversion":"1.0","id":"1","source":"/s","type":"t",
               "data":{"a":{"b":{"c":"y".repeat(90 * 1024)}}}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        p.apply(&big3),
        Err(TransformError::OutputTooLarge { .. })
    ));
}

/// Hostile templates and paths: compile may refuse them, nothing may panic, and a JSON
/// template that compiles always renders valid JSON.
#[test]
fn hostile_templates_do_not_panic() {
    let alphabet: Vec<char> = "<>{}[]\"\\:,. ab-_01nul$é\n"
        .chars()
        .chain(
            ["<name>", "<missing>", "<meshd.event>", "<order>"]
                .concat()
                .chars(),
        )
        .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let e = ev();
    let mut compiled = 0;
    for _ in 0..3000 {
        let len = (next() % 40) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let s = if next() % 2 == 0 {
            format!("{{\"k\": {s}}}")
        } else {
            s
        };
        for format in [None, Some(TemplateFormat::Json), Some(TemplateFormat::Text)] {
            let spec = TransformSpec::Template(TemplateSpec {
                paths: [
                    ("name".to_string(), "$.data.name".to_string()),
                    ("missing".to_string(), "$.data.nope".to_string()),
                    ("order".to_string(), "$.data.order".to_string()),
                ]
                .into_iter()
                .collect(),
                template: s.clone(),
                format,
                output: Some(OutputMode::Raw),
            });
            if let Ok(t) = Transform::compile(&spec) {
                compiled += 1;
                let out = t.apply(&e).expect("a compiled template renders");
                if let TransformOutput::Raw { content_type, body } = out {
                    if content_type == JSON_CONTENT_TYPE {
                        assert!(serde_json::from_slice::<Value>(&body).is_ok(), "{s}");
                    }
                }
            }
        }
        let _ = Transform::compile(&TransformSpec::Partial(PartialSpec {
            path: format!("${s}"),
            output: None,
        }));
    }
    assert!(
        compiled > 1000,
        "the generator should produce many valid templates"
    );
}

/// Rough cost per apply; run with
/// `cargo test --release -p meshd-core --lib transform::tests::perf -- --ignored --nocapture`.
#[test]
#[ignore]
fn perf() {
    let e = ev();
    let cases = [
        ("original", r#"{"original":{}}"#),
        ("data", r#"{"data":{}}"#),
        (
            "partial",
            r#"{"partial":{"path":"$.data.order","as":"raw"}}"#,
        ),
        (
            "partial-filter-regex",
            r#"{"partial":{"path":"$.data.order.items[?match(@.sku, '[a-z]+')]","as":"raw"}}"#,
        ),
        (
            "template-json",
            r#"{"template":{"paths":{"n":"$.data.name","o":"$.data.order","t":"$.type"},
               "template":"{\"name\": <n>, \"msg\": \"<t> for <n>\", \"order\": <o>}"}}"#,
        ),
        (
            "template-text",
            r#"{"template":{"paths":{"n":"$.data.name","t":"$.type"},"template":"<t> for <n>"}}"#,
        ),
    ];
    for (name, spec) in cases {
        let t = compile(spec).unwrap();
        let n = 100_000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(t.apply(std::hint::black_box(&e)).unwrap());
        }
        let per = start.elapsed() / n;
        println!("{name}: {per:?} per apply");
    }
}

/// The examples of docs/transforms.md give the results the doc shows.
#[test]
fn docs_examples() {
    let e = crate::event::parse_structured(
        br#"{"specversion": "1.0", "id": "42", "source": "/orders/eu", "type": "order.created",
            "time": "2024-05-01T12:00:00Z", "datacontenttype": "application/json",
            "region": "eu",
            "data": {"order": {"id": "o-1", "total": 12.5, "items": [{"sku": "a"}, {"sku": "b"}]},
                     "customer": {"name": "Ann"}}}"#,
    )
    .unwrap();
    let t = r#"{"template": {
      "paths": {"order": "$.data.order.id", "total": "$.data.order.total",
                "who": "$.data.customer.name", "items": "$.data.order.items"},
      "template": "{\"order\": <order>, \"total\": <total>, \"items\": <items>, \"msg\": \"<who> paid <total> for \\\"<order>\\\"\"}"
    }}"#;
    let out = out_event(t, &e);
    assert_eq!(
        out.data(),
        Some(&Data::Json(json!({"order": "o-1", "total": 12.5,
            "items": [{"sku":"a"},{"sku":"b"}], "msg": "Ann paid 12.5 for \"o-1\""})))
    );
    assert_eq!(
        raw_text(
            r#"{"template": {"paths": {"id": "$.data.order.id", "who": "$.data.customer.name"},
                "template": "Order <id> paid by <who>", "as": "raw"}}"#,
            &e
        ),
        "Order o-1 paid by Ann"
    );
    let v = raw_json(
        r#"{"template": {"template": "{\"received\": <meshd.event>, \"note\": \"from meshd\"}", "as":"raw"}}"#,
        &e,
    );
    assert_eq!(v["received"]["region"], "eu");
    assert_eq!(v["received"]["time"], "2024-05-01T12:00:00Z");
    assert_eq!(v["note"], "from meshd");
    assert_eq!(
        raw_json(
            r#"{"partial":{"path":"$.data.order.items[?match(@.sku, '[a-z]+')]","as":"raw"}}"#,
            &e
        ),
        json!([{"sku":"a"},{"sku":"b"}])
    );
    let (field, msg) =
        err_field(r#"{"template":{"paths":{"name":"data.name"},"template":"<name>"}}"#);
    assert_eq!(field, "transform.template.paths.name");
    assert!(msg.contains("is not an RFC 9535 JSONPath"), "{msg}");
}

/// The deepest path the limit allows parses and runs on an ordinary (2 MiB) thread stack.
#[test]
fn deepest_allowed_path_is_fine() {
    let d = MAX_PATH_NESTING - 1;
    let path = format!(
        "$.data.order.items[?{}@.sku=='a'{}]",
        "(".repeat(d),
        ")".repeat(d)
    );
    assert_eq!(nesting(&path), MAX_PATH_NESTING);
    let t = Transform::compile(&TransformSpec::Partial(PartialSpec {
        path,
        output: Some(OutputMode::Raw),
    }))
    .unwrap();
    let out = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || t.apply(&ev()))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        out,
        TransformOutput::Raw {
            content_type: JSON_CONTENT_TYPE.into(),
            body: br#"{"sku":"a"}"#.to_vec()
        }
    );
}

/// Paths copied from EventBridge examples: member names with `-` and `/` in dot notation.
#[test]
fn eventbridge_style_paths_with_dashes() {
    let e = crate::event::parse_structured(
        br#"{"specversion":"1.0","id":"1","source":"aws.ec2","type":"t",
            "data":{"instance-id":"i-1","a/b":{"c-d":[1,2]},
            "list":[{"k-v":"x"},{"k-v":"y"}],"n":1}}"#,
    )
    .unwrap();
    let sel = |path: &str| raw_json(&json!({"partial":{"path":path,"as":"raw"}}).to_string(), &e);
    assert_eq!(sel("$.data.instance-id"), json!("i-1"));
    assert_eq!(sel("$.data.a/b.c-d[1]"), json!(2));
    assert_eq!(sel("$.data.list[*].k-v"), json!(["x", "y"]));
    assert_eq!(sel("$..k-v"), json!(["x", "y"]));
    assert_eq!(sel("$.data.list[?@.k-v == 'y'].k-v"), json!("y"));
    // Quoted names and numbers in filters are untouched.
    assert_eq!(sel("$.data['instance-id']"), json!("i-1"));
    assert_eq!(sel("$.data.list[?@.k-v == 'a-b'].k-v"), Value::Null);
    assert_eq!(
        sel("$.data[?@ == 1.5e-3]"),
        Value::Null,
        "an exponent in a filter stays a number"
    );
    let v = raw_json(
        r#"{"template":{"paths":{"id":"$.data.instance-id"},"template":"{\"i\": <id>}","as":"raw"}}"#,
        &e,
    );
    assert_eq!(v, json!({"i": "i-1"}));
}
