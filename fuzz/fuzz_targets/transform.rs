//! Fuzzes JSONPath and template rendering: the input is split at the first NUL byte into a
//! JSONPath and a template. Compiling must never panic; a compiled transform must apply to
//! a fixed event without panicking and within the documented output limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_core::transform::{Transform, TransformSpec};
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, template) = text.split_once('\0').unwrap_or((text, "<v>"));
    let event = meshd_core::event::parse_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1,"two",{"b":null}],"s":"x\"y"}}"#,
    )
    .expect("fixed event is valid");
    let specs = [
        json!({"partial": {"path": path}}),
        json!({"template": {"paths": {"v": path}, "template": template}}),
        json!({"template": {"paths": {"v": "$.data.s"}, "template": template, "format": "text"}}),
    ];
    for spec in specs {
        let Ok(spec) = serde_json::from_value::<TransformSpec>(spec) else {
            continue;
        };
        if let Ok(t) = Transform::compile(&spec) {
            let _ = t.apply(&event);
        }
    }
});
