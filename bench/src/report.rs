//! The lines the bench prints: one per scenario and round (throughput, latency
//! quantiles, errors, CPU shares) and the ratios the targets in BENCHMARKS.md
//! are stated in, with MET / NOT MET.

use std::collections::BTreeMap;

use crate::{Scenario, load::Phase, procfs::CpuWatch};

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

pub(crate) fn print_phase(label: &str, p: &Phase, cpu: &CpuWatch) {
    let h = &p.tally.hist;
    println!(
        "  {label:<17}{:>8.0} rps  p50 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>7} ms  err {}+{}  cpu% {}",
        p.rps(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        p.tally.errors,
        p.tally.unexpected,
        cpu.format(&p.cpu),
    );
    if let Some(e) = &p.tally.first_error {
        println!("    first error: {e}");
    }
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

pub(crate) fn print_ratios(results: &BTreeMap<Scenario, Phase>) {
    let rps = |s: Scenario| results.get(&s).map(Phase::rps);
    if let (Some(c), Some(h)) = (rps(Scenario::Cached), rps(Scenario::Health)) {
        let p99 = results[&Scenario::Cached]
            .tally
            .hist
            .value_at_quantile(0.99);
        println!(
            "  cached / health rps = {:.3} (target >= 0.90: {}); cached p99 {} ms (target <= 1 ms: {})",
            c / h,
            verdict(c / h >= 0.90),
            ms(p99),
            verdict(p99 <= 1000),
        );
    }
    if let (Some(u), Some(b)) = (rps(Scenario::Uncached), rps(Scenario::SelectId)) {
        println!(
            "  uncached / select-id rps = {:.3} (target >= 0.70: {})",
            u / b,
            verdict(u / b >= 0.70)
        );
    }
    if let (Some(l), Some(o)) = (rps(Scenario::OneKeyLimited), rps(Scenario::OneKey)) {
        println!(
            "  one-key-limited / one-key rps = {:.3} (target >= 0.90: {})",
            l / o,
            verdict(l / o >= 0.90)
        );
    }
    // Each edge against its own transport's ceiling: Check rides the same
    // gRPC listener as VerifyKey; forward auth is HTTP/1.1, whose ceiling is
    // the same listener's /healthz.
    for (edge, base) in [
        (Scenario::ExtAuthz, Scenario::Cached),
        (Scenario::ForwardAuth, Scenario::HttpHealth),
        (Scenario::ForwardAuth, Scenario::Cached),
    ] {
        if let (Some(e), Some(c)) = (rps(edge), rps(base)) {
            let target = if (edge, base) == (Scenario::ForwardAuth, Scenario::Cached) {
                "for reference".to_owned()
            } else {
                format!("target >= 0.90: {}", verdict(e / c >= 0.90))
            };
            println!(
                "  {} / {} rps = {:.3} ({target})",
                edge.name(),
                base.name(),
                e / c
            );
        }
    }
    for base in [Scenario::SelectHash, Scenario::SelectIdNoping] {
        if let (Some(u), Some(b)) = (rps(Scenario::Uncached), rps(base)) {
            println!(
                "  uncached / {} rps = {:.3} (for reference)",
                base.name(),
                u / b
            );
        }
    }
}
