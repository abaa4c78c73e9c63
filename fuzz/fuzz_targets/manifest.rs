//! One manifest file's text, read as edgecontroller's manifest folder reads it
//! (`edgecontroller::manifests::fuzzing::parse`): multi-document YAML, `List`s, Endpoints
//! derived from Pods. Every object it yields reads back as itself: versioning by content
//! is stable.
#![no_main]

use edgecontroller::object::Object;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Files are read as UTF-8 text; anything else is an I/O problem before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (objects, _problems) = edgecontroller::manifests::fuzzing::parse(text);
    for obj in objects {
        let again = Object::from_value((*obj.value).clone(), true);
        assert_eq!(again, Ok(Some(obj)), "an object reads back as itself");
    }
});
