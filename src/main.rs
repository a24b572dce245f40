//! The `proofgate` command: parse arguments, set up tracing, hand over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use proofgate::departments::mock::{builtin_fixture, RunningMock};
use proofgate::server::{self, ServeOptions};
use proofgate::telemetry::{self, LogFormat};

/// Exit code for bad configuration or input (sysexits EX_USAGE / EX_DATAERR family).
const EXIT_CONFIG: u8 = 64;
const EXIT_DATA: u8 = 65;

#[derive(Parser)]
#[command(
    name = "proofgate",
    version,
    about = "Data-verification gateway of a certificate-free city"
)]
struct Cli {
    /// Log lines as JSON instead of text. RUST_LOG sets the filter (default: info).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway node. With no arguments: sled in ./proofgate-data, policies
    /// from ./policies, mock departments started in-process on loopback ports.
    Serve {
        #[arg(long, default_value = server::DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = server::DEFAULT_POLICIES)]
        policies: PathBuf,
        /// Names this node in application ids and its log's checkpoints.
        #[arg(long, default_value = server::DEFAULT_NODE_ID)]
        node_id: String,
        /// Do not start the built-in mock departments; real ones register over gRPC.
        #[arg(long)]
        no_mock_departments: bool,
    },
    /// Run one built-in mock department standalone.
    MockDepartment {
        /// public-security, civil-affairs, human-resources, provident-fund,
        /// market-regulation, natural-resources, health or education.
        name: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Gateway to register with and report finished verifications to.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        gateway: String,
    },
    /// Work with policy sets.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create the node's signing and pseudonym keys in DATA_DIR/keys.
    Keygen {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Drive SubmitApplication against a running gateway and report applications/s and latency.
    Bench {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds per phase (baseline, then submissions).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "hpf-withdrawal-mortgage")]
        matter: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory and print its version digest.
    Check { dir: PathBuf },
    /// Write a Jinhua-scale synthetic catalogue (4,052 proofs, ~1,000 matters) for load tests.
    GenerateJinhua {
        out_dir: PathBuf,
        #[arg(long, default_value_t = 4052)]
        proofs: usize,
        #[arg(long, default_value_t = 1000)]
        matters: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            listen,
            data_dir,
            policies,
            node_id,
            no_mock_departments,
        } => {
            let options = ServeOptions {
                listen,
                data_dir,
                policies,
                node_id,
                mock_departments: !no_mock_departments,
                ..ServeOptions::default()
            };
            let running = match server::start(options).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            println!(
                "proofgate serving on {} ({} mock departments); Ctrl-C to stop",
                running.endpoint(),
                running.mocks.len()
            );
            wait_for_signal().await;
            running.shutdown().await;
            ExitCode::SUCCESS
        }
        Command::MockDepartment {
            name,
            listen,
            gateway,
        } => {
            let fixture = match builtin_fixture(&name) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let mock = match RunningMock::start(fixture, listen, Some(gateway.clone())).await {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = mock.register(&gateway).await {
                eprintln!("proofgate: {e}");
                mock.stop().await;
                return ExitCode::FAILURE;
            }
            println!("mock department {name} serving on http://{}", mock.addr);
            wait_for_signal().await;
            mock.stop().await;
            ExitCode::SUCCESS
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => {
            let started = std::time::Instant::now();
            match proofgate::policy::load_dir(&dir) {
                Ok(set) => {
                    println!(
                        "{}: {} proofs, {} matters, version {} (checked in {:.0} ms)",
                        dir.display(),
                        set.proofs.len(),
                        set.matters.len(),
                        set.version,
                        started.elapsed().as_secs_f64() * 1000.0
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "{} problem(s); the policy set was not accepted",
                        errors.0.len()
                    );
                    ExitCode::from(EXIT_DATA)
                }
            }
        }
        Command::Policy {
            command:
                PolicyCommand::GenerateJinhua {
                    out_dir,
                    proofs,
                    matters,
                },
        } => {
            match proofgate::policy::synthetic::write_jinhua_catalogue(&out_dir, proofs, matters) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: cannot write {}: {e}", out_dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keygen { data_dir } => {
            match proofgate::security::generate_keys(&data_dir.join("keys")) {
                Ok(()) => {
                    println!("keys written to {}", data_dir.join("keys").display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench {
            endpoint,
            concurrency,
            seconds,
            matter,
        } => {
            let options = proofgate::bench::BenchOptions {
                endpoint,
                concurrency,
                duration: Duration::from_secs(seconds),
                matter,
            };
            println!(
                "bench: {} for {}s per phase at concurrency {}",
                options.endpoint, seconds, concurrency
            );
            match proofgate::bench::run(&options).await {
                Ok(reports) => {
                    for r in reports {
                        println!("{r}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
