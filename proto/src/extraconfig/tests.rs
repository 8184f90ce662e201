use std::collections::BTreeMap;

use super::*;

/// A small tree exercising every container kind.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tree {
    name: String,
    count: i64,
    flag: bool,
    args: Vec<String>,
    children: BTreeMap<String, Leaf>,
    list: Vec<Leaf>,
    maybe: Option<Leaf>,
    state: Leaf,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Leaf {
    text: String,
}

impl Node for Leaf {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("text"), &mut self.text)
    }
}

impl Node for Tree {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError> {
        v.scalar(&at.field("name"), &mut self.name)?;
        v.scalar(&at.field("count").rw(), &mut self.count)?;
        v.scalar(&at.field("flag"), &mut self.flag)?;
        v.strings(&at.field("args"), &mut self.args)?;
        map(v, &at.field("children"), &mut self.children)?;
        slice(
            v,
            &at.field("list").non_persistent(),
            &mut self.list,
            |v, p, e| e.visit(v, p),
        )?;
        optional(v, &at.field("maybe"), &mut self.maybe)?;
        self.state.visit(v, &at.field("state").rw())
    }
}

fn leaf(s: &str) -> Leaf {
    Leaf {
        text: s.to_string(),
    }
}

fn kv(pairs: &[(&str, &str)]) -> KeyValues {
    pairs.iter().copied().collect()
}

fn decode_tree(pairs: &[(&str, &str)]) -> Result<(Tree, Vec<String>), CodecError> {
    let mut t = Tree::default();
    let w = decode(&mut t, &Path::root(), &mut kv(pairs))?;
    Ok((t, w))
}

#[test]
fn key_rules_read_only_read_write_entries_and_suffixes() {
    let p = Path::root().field("sessions").entry("abc");
    assert_eq!(
        p.field("cmd").field("Path").key(),
        "guestinfo.vice./sessions|abc/cmd/Path"
    );
    // A read-write field under a read-only parent rewrites the whole path with `.`.
    assert_eq!(
        p.field("started").rw().key(),
        "guestinfo.vice..sessions|abc.started"
    );
    assert_eq!(
        p.field("detail").rw().field("starttime").key(),
        "guestinfo.vice..sessions|abc.detail.starttime"
    );
    // ... and a read-only field under a read-write parent rewrites it back.
    assert_eq!(
        p.rw().field("x").ro().key(),
        "guestinfo.vice./sessions|abc/x"
    );
    let e = Path::root().field("execs").non_persistent().entry("e1");
    assert_eq!(
        e.field("cmd").field("Args").key_with_suffix("~"),
        "guestinfo.vice./execs|e1/cmd/Args~@non-persistent"
    );
    assert_eq!(
        e.field("started").rw().key(),
        "guestinfo.vice..execs|e1.started@non-persistent"
    );
}

#[test]
fn encoding_writes_every_kind() {
    let t = Tree {
        name: String::new(),
        count: -3,
        flag: true,
        args: vec!["a".into(), "b c".into()],
        children: [("y".to_string(), leaf("1")), ("x".to_string(), leaf("2"))].into(),
        list: vec![leaf("p"), leaf("q")],
        maybe: None,
        state: leaf("s"),
    };
    let out = encode(&t, &Path::root());
    let expected: BTreeMap<String, String> = [
        ("guestinfo.vice./name", "<nil>"),
        ("guestinfo.vice..count", "-3"),
        ("guestinfo.vice./flag", "true"),
        ("guestinfo.vice./args", "1"),
        ("guestinfo.vice./args~", "a|b c"),
        ("guestinfo.vice./children", "x|y"),
        ("guestinfo.vice./children|x/text", "2"),
        ("guestinfo.vice./children|y/text", "1"),
        ("guestinfo.vice./list@non-persistent", "1"),
        ("guestinfo.vice./list|0/text@non-persistent", "p"),
        ("guestinfo.vice./list|1/text@non-persistent", "q"),
        ("guestinfo.vice..state.text", "s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(out, expected);
}

#[test]
fn empty_containers_and_absent_options_write_no_keys() {
    let out = encode(&Tree::default(), &Path::root());
    let keys: Vec<&str> = out.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "guestinfo.vice..count",
            "guestinfo.vice..state.text",
            "guestinfo.vice./flag",
            "guestinfo.vice./name"
        ]
    );
}

#[test]
fn nil_is_empty_and_empty_is_missing() {
    let mut t = Tree {
        name: "old".into(),
        ..Tree::default()
    };
    decode(
        &mut t,
        &Path::root(),
        &mut kv(&[("guestinfo.vice./name", "")]),
    )
    .unwrap();
    assert_eq!(t.name, "old", "an empty value reads as a missing key");
    decode(
        &mut t,
        &Path::root(),
        &mut kv(&[("guestinfo.vice./name", "<nil>")]),
    )
    .unwrap();
    assert_eq!(t.name, "", "<nil> is present and empty");
}

#[test]
fn decoding_merges_into_what_is_there() {
    let (mut t, _) = decode_tree(&[
        ("guestinfo.vice./children", "a|b"),
        ("guestinfo.vice./children|a/text", "1"),
        ("guestinfo.vice./children|b/text", "2"),
        ("guestinfo.vice./flag", "true"),
    ])
    .unwrap();
    // A later read lists only `b` and changes it; `a` and `flag` are kept, as VIC's decoder keeps them.
    decode(
        &mut t,
        &Path::root(),
        &mut kv(&[
            ("guestinfo.vice./children", "b"),
            ("guestinfo.vice./children|b/text", "3"),
        ]),
    )
    .unwrap();
    assert_eq!(t.children["a"], leaf("1"));
    assert_eq!(t.children["b"], leaf("3"));
    assert!(t.flag);
}

#[test]
fn lookups_ignore_case() {
    let (t, _) =
        decode_tree(&[("GUESTINFO.VICE./NAME", "x"), ("guestinfo.vice./Flag", "T")]).unwrap();
    assert_eq!(t.name, "x");
    assert!(t.flag);
}

#[test]
fn optional_struct_appears_only_with_its_keys() {
    let (t, _) = decode_tree(&[]).unwrap();
    assert_eq!(t.maybe, None);
    let (t, _) = decode_tree(&[("guestinfo.vice./maybe/text", "<nil>")]).unwrap();
    assert_eq!(t.maybe, Some(leaf("")));
}

#[test]
fn vic_truncates_an_element_containing_a_pipe() {
    // What an old VCH writes for ["sh", "-c", "echo a|tr a b"]: VIC's own decoder gets ["sh", "-c", "echo a"].
    let (t, warnings) = decode_tree(&[
        ("guestinfo.vice./args", "2"),
        ("guestinfo.vice./args~", "sh|-c|echo a|tr a b"),
    ])
    .unwrap();
    assert_eq!(t.args, ["sh", "-c", "echo a"]);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("guestinfo.vice./args~"),
        "{warnings:?}"
    );
}

#[test]
fn pipe_extension_is_written_only_when_needed_and_read_losslessly() {
    let mut t = Tree {
        args: vec!["sh".into(), "-c".into(), "echo a|tr a b".into()],
        ..Tree::default()
    };
    let out = encode(&t, &Path::root());
    // VIC's key is still there and still what VIC writes, so an old reader sees what it always saw.
    assert_eq!(out["guestinfo.vice./args~"], "sh|-c|echo a|tr a b");
    assert_eq!(
        out["guestinfo.vice./args~b64"],
        "c2g=|LWM=|ZWNobyBhfHRyIGEgYg=="
    );
    let mut back = Tree::default();
    let warnings = decode(
        &mut back,
        &Path::root(),
        &mut out.clone().into_iter().collect::<KeyValues>(),
    )
    .unwrap();
    assert_eq!(back.args, t.args);
    assert!(warnings.is_empty());

    t.args = vec!["plain".into()];
    assert!(!encode(&t, &Path::root()).contains_key("guestinfo.vice./args~b64"));
}

#[test]
fn stale_pipe_extension_is_ignored() {
    // An old VCH rewrote args~ but left our extension behind: VIC's value wins.
    let (t, _) = decode_tree(&[
        ("guestinfo.vice./args", "1"),
        ("guestinfo.vice./args~", "new|args"),
        ("guestinfo.vice./args~b64", "b2xk|YXxi"),
    ])
    .unwrap();
    assert_eq!(t.args, ["new", "args"]);
    // A malformed extension is ignored the same way.
    let (t, _) = decode_tree(&[
        ("guestinfo.vice./args", "0"),
        ("guestinfo.vice./args~", "x"),
        ("guestinfo.vice./args~b64", "!!!"),
    ])
    .unwrap();
    assert_eq!(t.args, ["x"]);
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("guestinfo.vice..count", "ten")],
            "guestinfo.vice..count: expected an integer (i64), found \"ten\"",
        ),
        (
            &[("guestinfo.vice./flag", "yes")],
            "guestinfo.vice./flag: expected true or false, found \"yes\"",
        ),
        (
            &[("guestinfo.vice./args", "x")],
            "guestinfo.vice./args: expected the last index of a list, found \"x\"",
        ),
        (
            &[("guestinfo.vice./list@non-persistent", "99999999")],
            "guestinfo.vice./list@non-persistent: index 99999999 is out of range (at most 65535)",
        ),
        (
            &[
                ("guestinfo.vice./args", "3"),
                ("guestinfo.vice./args~", "a|b"),
            ],
            "guestinfo.vice./args~: holds 2 element(s), but guestinfo.vice./args = 3 means 4",
        ),
    ];
    for (pairs, message) in cases {
        assert_eq!(decode_tree(pairs).unwrap_err().to_string(), *message);
    }
}

#[test]
fn scalar_forms() {
    let mut b = false;
    for (text, want) in [
        ("1", true),
        ("t", true),
        ("TRUE", true),
        ("True", true),
        ("0", false),
        ("F", false),
    ] {
        b.decode(text).unwrap();
        assert_eq!(b, want, "{text}");
    }
    let mut bytes = Bytes::default();
    assert!(bytes
        .decode("not base64!")
        .unwrap_err()
        .starts_with("bad base64"));
    let mut ip: Option<std::net::IpAddr> = None;
    ip.decode("rBAAAg==").unwrap();
    assert_eq!(ip, Some("172.16.0.2".parse().unwrap()));
    ip.decode("AAAAAAAAAAAAAP//CAgICA==").unwrap();
    assert_eq!(ip, Some("::ffff:8.8.8.8".parse().unwrap()));
    assert_eq!(
        ip.encode().unwrap(),
        "AAAAAAAAAAAAAP//CAgICA==",
        "the 16-byte form is kept"
    );
    assert_eq!(
        ip.decode("AQID").unwrap_err(),
        "an IP address has 4 or 16 bytes, this one has 3"
    );
}

#[test]
fn source_errors_name_the_key() {
    struct Broken;
    impl Source for Broken {
        fn get(&mut self, _key: &str) -> Result<Option<String>, String> {
            Err("line down".into())
        }
    }
    let mut t = Tree::default();
    let err = decode(&mut t, &Path::root(), &mut Broken).unwrap_err();
    assert_eq!(err.to_string(), "reading guestinfo.vice./name: line down");
}
