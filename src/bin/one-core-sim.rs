//! `one-core-sim`: a simulated ONe core (every service of `proto/one/core/v1`) over generated
//! data, for demos, tests and benchmarks. See `one_loyalty::sim`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use one_loyalty::sim::{CoreSim, Faults, SimSpec, SimState};

#[derive(Debug, Parser)]
#[command(
    name = "one-core-sim",
    version,
    about = "A simulated ONe core for ONe Loyalty"
)]
struct Cli {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 20)]
    clients: u32,
    #[arg(long, default_value_t = 50)]
    products: u32,
    /// Invoices per simulated day of history.
    #[arg(long, default_value_t = 10)]
    invoices_per_day: u32,
    #[arg(long, default_value_t = 10)]
    lines_per_invoice: u32,
    /// Days of history, ending yesterday.
    #[arg(long, default_value_t = 3)]
    days: u32,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep issuing a new invoice (dated yesterday) this often; 0: never.
    #[arg(long, default_value_t = 0)]
    new_invoice_every_ms: u64,
    /// Faults: added latency per call.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Faults: the probability that a call fails with UNAVAILABLE.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Read fault commands (down, up, drop, …) on standard input while running.
    #[arg(long)]
    stdin_control: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let spec = SimSpec {
        clients: cli.clients,
        products: cli.products,
        invoices_per_day: cli.invoices_per_day,
        lines_per_invoice: cli.lines_per_invoice,
        days: cli.days,
        seed: cli.seed,
    };
    let sim = CoreSim::new(SimState::generate(spec, chrono::Utc::now()));
    sim.set_faults(Faults {
        latency: Duration::from_millis(cli.latency_ms),
        error_rate: cli.error_rate.clamp(0.0, 1.0),
        ..Faults::default()
    });
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    {
        let state = sim.state();
        println!(
            "one-core-sim on {}: {} clients, {} products, {} invoice lines; declaration type {}, pool {}",
            cli.listen,
            spec.clients,
            spec.products,
            state.invoice_lines(),
            one_loyalty::sim::DECLARATION_TYPE,
            one_loyalty::sim::POOL_ID,
        );
    }
    if cli.new_invoice_every_ms > 0 {
        let live = sim.clone();
        let every = Duration::from_millis(cli.new_invoice_every_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let yesterday = chrono::Utc::now().date_naive().pred_opt();
                if let Some(day) = yesterday {
                    live.state().add_invoice(spec, day);
                }
            }
        });
    }
    if cli.stdin_control {
        println!("{COMMANDS}");
        tokio::spawn(control(sim.clone(), spec));
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match sim.run(listener, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("one-core-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Faults on demand, one command per line on standard input.
const COMMANDS: &str = "commands: down | up | fail N | latency MS | errors RATE | drop | refuse | accept | invoice | status";

async fn control(sim: CoreSim, spec: SimSpec) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let (command, arg) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let mut faults = sim.state().faults();
        let reply = match command {
            "down" => {
                faults.down = true;
                "every call fails with UNAVAILABLE".to_owned()
            }
            "up" => {
                faults = Faults::default();
                "all faults cleared".to_owned()
            }
            "fail" => {
                faults.fail_next = arg.parse().unwrap_or(1);
                format!("the next {} calls fail", faults.fail_next)
            }
            "latency" => {
                faults.latency = Duration::from_millis(arg.parse().unwrap_or(0));
                format!("{:?} added to every call", faults.latency)
            }
            "errors" => {
                faults.error_rate = arg.parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0);
                format!("calls fail with probability {}", faults.error_rate)
            }
            "refuse" => {
                faults.refuse_connections = true;
                "new connections are closed at once".to_owned()
            }
            "accept" => {
                faults.refuse_connections = false;
                "connections accepted".to_owned()
            }
            "drop" => {
                sim.drop_connections();
                "open connections dropped".to_owned()
            }
            "invoice" => {
                let day = chrono::Utc::now().date_naive().pred_opt();
                day.map_or_else(String::new, |d| sim.state().add_invoice(spec, d))
            }
            "status" => {
                let state = sim.state();
                format!(
                    "{} calls; {} invoice lines; faults {:?}",
                    state.calls,
                    state.invoice_lines(),
                    faults
                )
            }
            _ => COMMANDS.to_owned(),
        };
        sim.set_faults(faults);
        println!("{reply}");
    }
}
