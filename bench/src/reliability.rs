//! `tether-bench reliability-report FILE`: the JSON lines `scripts/reliability` gathers (one per
//! case group of the suite, one per fuzz target) as the markdown of `docs/reliability.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Bytes in KiB/MiB/GiB.
fn size(b: u64) -> String {
    match b {
        0..=1023 => format!("{b} B"),
        1024..=1_048_575 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", b as f64 / 1_073_741_824.0),
    }
}

pub fn report(file: &Path, header: &str) -> anyhow::Result<String> {
    let data =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let rows: Vec<Value> = data
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a report line")?;
    let mut out = String::new();
    writeln!(out, "# Reliability: the last full run\n")?;
    writeln!(out, "{header}\n")?;
    writeln!(out, "Made by `scripts/reliability` (cases in `tether/tests/reliability.rs`); CI runs the short version of the same cases inside `scripts/test`.\n")?;
    writeln!(
        out,
        "| group | size | cases | passed | bytes checked | faults injected | crashes | leaks |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    let mut total = [0u64; 6];
    for r in rows.iter().filter(|r| r.get("group").is_some()) {
        let f = [
            num(r, "cases"),
            num(r, "passed"),
            num(r, "bytes_checked"),
            num(r, "faults_injected"),
            num(r, "crashes"),
            num(r, "leaks"),
        ];
        for (t, v) in total.iter_mut().zip(f) {
            *t += v;
        }
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            text(r, "group"),
            text(r, "size"),
            f[0],
            f[1],
            size(f[2]),
            f[3],
            f[4],
            f[5]
        )?;
    }
    writeln!(
        out,
        "| **all** | | **{}** | **{}** | **{}** | **{}** | **{}** | **{}** |\n",
        total[0],
        total[1],
        size(total[2]),
        total[3],
        total[4],
        total[5]
    )?;
    let fuzz: Vec<&Value> = rows.iter().filter(|r| r.get("fuzz").is_some()).collect();
    if !fuzz.is_empty() {
        writeln!(out, "## Fuzzing\n")?;
        writeln!(out, "| target | seconds | runs | coverage | features | corpus (kept in `fuzz/corpus`) | crashes |")?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
        for r in fuzz {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                text(r, "fuzz"),
                num(r, "seconds"),
                num(r, "runs"),
                num(r, "cov"),
                num(r, "ft"),
                num(r, "corpus"),
                num(r, "crashes")
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "## What each group did\n")?;
    for r in rows.iter().filter(|r| r.get("group").is_some()) {
        let notes = text(r, "notes");
        if !notes.is_empty() {
            writeln!(
                out,
                "- **{}**: {}",
                text(r, "group"),
                notes.replace('\n', " ")
            )?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_fuzz_targets_become_tables_with_totals() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.jsonl");
        std::fs::write(
            &f,
            r#"{"group":"a","size":"full","cases":3,"passed":3,"bytes_checked":2048,"faults_injected":5,"crashes":0,"leaks":0,"notes":"x"}
{"group":"b","size":"full","cases":2,"passed":1,"bytes_checked":0,"faults_injected":1,"crashes":1,"leaks":0,"notes":""}
{"fuzz":"t","seconds":60,"runs":1000,"cov":77,"ft":90,"corpus":12,"crashes":0}
"#,
        )
        .unwrap();
        let md = report(&f, "machine").unwrap();
        assert!(
            md.contains("| a | full | 3 | 3 | 2.0 KiB | 5 | 0 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| **all** | | **5** | **4** | **2.0 KiB** | **6** | **1** | **0** |"),
            "{md}"
        );
        assert!(md.contains("| t | 60 | 1000 | 77 | 90 | 12 | 0 |"), "{md}");
        assert!(md.contains("- **a**: x"));
    }
}
