use super::*;

#[test]
fn explicit_hash_is_a_128_bit_decimal() {
    let h = explicit_hash("shop.orders:{\"id\":1}");
    assert!(h.parse::<u128>().is_ok() && h != explicit_hash("shop.orders:{\"id\":2}"));
}

#[test]
fn options_are_checked() {
    let o = |k: &str, v: &str| Options::parse(&[(k.to_owned(), v.to_owned())]);
    assert!(o("partition", "hash").unwrap().hash);
    assert_eq!(o("max.record.bytes", "2097152").unwrap().max_record, Some(2 << 20));
    for (k, v) in [
        ("partition", "random"),
        ("max.record.bytes", "0"),
        ("max.record.bytes", "99999999"),
        ("colour", "red"),
    ] {
        assert_eq!(o(k, v).unwrap_err().kind(), Kind::Config, "{k}={v}");
    }
}
