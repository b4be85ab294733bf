//! `ferry-scalesim --trace FILE --out DIR` end to end: a user's CSV in, the report out.

use std::process::Command;

#[test]
fn replays_a_csv_trace_and_writes_the_report_plots_and_decisions() {
    let dir = std::env::temp_dir().join(format!("ferry-scalesim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("checkout.csv");
    let mut csv = String::from("second,arrivals,mean_service_s\n");
    for second in 0..900 {
        let arrivals = if (120..300).contains(&second) { 60 } else { 3 };
        csv.push_str(&format!("{second},{arrivals},0.4\n"));
    }
    std::fs::write(&trace, csv).unwrap();
    let out = dir.join("out");

    let output = Command::new(env!("CARGO_BIN_EXE_ferry-scalesim"))
        .arg("--trace")
        .arg(&trace)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("| checkout | ferry |"), "{table}");
    assert!(table.contains("ferry / oracle replica-s"), "{table}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let trace_report = &report["traces"][0];
    assert_eq!(trace_report["name"], "checkout");
    for policy in ["ferry", "keda", "oracle"] {
        let p = &trace_report["policies"][policy];
        assert!(p["p99_wait_s"].as_f64().unwrap() >= 0.0);
        assert!(p["replica_seconds"].as_f64().unwrap() > 0.0);
    }
    let svg = std::fs::read_to_string(out.join("checkout.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let decisions: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkout.ferry-decisions.json")).unwrap(),
    )
    .unwrap();
    let first = &decisions[0];
    assert_eq!(first["reason"]["kind"], "activate");
    assert_eq!(first["from"], 0);

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "0,1\n1,lots\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-scalesim"))
        .arg("--trace")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 2"));
    std::fs::remove_dir_all(&dir).unwrap();
}
