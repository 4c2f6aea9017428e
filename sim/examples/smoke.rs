use postcopy::prepage::StrategySpec;
use postcopy::source::Mode;
use postcopy_sim::workload::{stress, Layout};
use postcopy_sim::{simulate, SimConfig};

fn main() {
    for ws in [8, 64, 512] {
        let w = stress(Layout::paper(ws), 1).unwrap();
        for (mode, s, fpe) in [
            (Mode::XEN_PRECOPY, StrategySpec::None, false),
            (Mode::Postcopy, StrategySpec::None, false),
            (Mode::Postcopy, StrategySpec::Linear, false),
            (Mode::Postcopy, StrategySpec::Bubble, false),
            (Mode::Postcopy, StrategySpec::Bubble, true),
        ] {
            let cfg = SimConfig { mode, strategy: s, free_page_elimination: fpe, ..SimConfig::default() };
            let r = simulate(&w, &cfg).unwrap();
            println!("{ws:>4} {:<14} {:<8} fpe={} total {:>8.1} ms down {:>8.1} ms pages {:>7} faults {:>6} ({:.2}%) inflight {} blocked {:.1} ms ev {} wall {:.1} ms",
                r.mode, r.strategy, fpe, r.engine.total_time_ms, r.engine.downtime_ms, r.engine.pages_transferred,
                r.engine.network_faults, r.network_fault_share*100.0, r.engine.faults_in_flight, r.vcpu_blocked_ms, r.events, r.wall_ms);
        }
    }
}
