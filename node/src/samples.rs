//! Sample photos built into the binary so `ovseg segment` runs with no input at all
//! (sources and licences: tests/data/ATTRIBUTION.md).
pub const SAMPLES: &[(&str, &[u8])] = &[
    ("china", include_bytes!("../../tests/data/images/china.jpg")),
    ("coffee", include_bytes!("../../tests/data/images/coffee.jpg")),
    ("chelsea", include_bytes!("../../tests/data/images/chelsea.jpg")),
    ("astronaut", include_bytes!("../../tests/data/images/astronaut.jpg")),
];
