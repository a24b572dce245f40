//! The `proofgate` command: parse arguments, load the configuration, set up
//! tracing, hand over to the library, and map the result to an exit code
//! (64 bad configuration or arguments, 65 bad data, 69 cannot bind or the
//! store is in use, 1 anything else; see README "Exit codes").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use proofgate::config::{self, Flags, MetricsListen};
use proofgate::departments::mock::{builtin_fixture, RunningMock};
use proofgate::server::{self, exit};
use proofgate::telemetry::{self, LogFormat};

const EXIT_CONFIG: u8 = exit::CONFIG;
const EXIT_DATA: u8 = exit::DATA;

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
    /// from ./policies (or, without that folder, the sample catalog compiled
    /// in), mock departments started in-process on loopback ports, metrics on
    /// 127.0.0.1:9464.
    Serve {
        /// A node configuration file (TOML); PROOFGATE_* variables override it,
        /// flags override both. `proofgate config check FILE` validates one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// [default: 127.0.0.1:50051]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// [default: proofgate-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A policy folder, watched for changes [default: ./policies if it
        /// exists, else the sample catalog compiled into the binary]
        #[arg(long)]
        policies: Option<PathBuf>,
        /// A policy-signing verifier key (a .vkey file from `policy keygen`);
        /// repeatable. Given any, every policy set must be signed by one.
        #[arg(long = "policy-key", value_name = "VKEYFILE")]
        policy_keys: Vec<PathBuf>,
        /// Names this node in application ids and its log's checkpoints [default: node-1].
        #[arg(long)]
        node_id: Option<String>,
        /// Prometheus metrics over HTTP on this address (GET /metrics), or `off`
        /// [default: 127.0.0.1:9464]
        #[arg(long)]
        metrics_listen: Option<MetricsListen>,
        /// Do not start the built-in mock departments; real ones register over gRPC.
        #[arg(long)]
        no_mock_departments: bool,
        /// No TLS (loopback only; callers name themselves in a header). For development.
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Validate a node configuration file (with the PROOFGATE_* environment) and print the result.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create a development CA and certificates for the gateway, halls, every
    /// mock department, an auditor, a citizen portal and an admin; or issue one more.
    DevCerts {
        /// Folder of the CA and certificates.
        #[arg(long, default_value = "proofgate-data/certs")]
        dir: PathBuf,
        /// Issue a certificate for this identity (<name>.<role>.proofgate, role one of
        /// hall, department, auditor, citizen-portal, admin) with the existing CA.
        #[arg(long)]
        issue: Option<String>,
    },
    /// Run one built-in mock department standalone.
    MockDepartment {
        /// public-security, civil-affairs, human-resources, provident-fund,
        /// market-regulation, natural-resources, health or education.
        name: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Gateway to register with and report finished verifications to.
        #[arg(long, default_value = "https://127.0.0.1:50051")]
        gateway: String,
        /// Certificates folder holding <name>.department.proofgate.pem/.key and ca.pem.
        #[arg(long, default_value = "proofgate-data/certs")]
        certs: PathBuf,
        /// No TLS (the gateway must run plaintext too). For development.
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Work with policy sets.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Offline audit tools: work on a data folder (server stopped) or an exported file.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The reform's figures, computed from a (stopped) node's log.
    Stats {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Create the node's signing and pseudonym keys in DATA_DIR/keys.
    Keygen {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Drive SubmitApplication against a running gateway and report applications/s and latency.
    Bench {
        #[arg(long, default_value = "https://127.0.0.1:50051")]
        endpoint: String,
        /// Certificates folder (the load generator is hall-wucheng.hall.proofgate).
        #[arg(long, default_value = "proofgate-data/certs")]
        certs: PathBuf,
        /// Talk plaintext to a gateway started with --insecure-plaintext.
        #[arg(long)]
        insecure_plaintext: bool,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds per phase (baseline, then submissions).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "hpf-withdrawal-mortgage")]
        matter: String,
        /// Baseline of plain Query calls straight to these departments, all at
        /// once per application: NAME=URI,NAME=URI,... (default: health checks).
        #[arg(long, value_delimiter = ',')]
        fanout: Vec<String>,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct LogSource {
    /// A node's data folder (its server must be stopped).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A file written by `proofgate audit export`.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write every entry and checkpoint, with the verifier key, to one file.
    Export {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Recompute every leaf and root; check every checkpoint signature; report the first bad index.
    Verify {
        #[command(flatten)]
        source: LogSource,
        /// The verifier key you trust (C2SP vkey text, or a file holding it).
        /// Without it, the key carried by the log is used.
        #[arg(long)]
        vkey: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-derive every decision from the logged policy and signed answers; report differences.
    Replay {
        #[command(flatten)]
        source: LogSource,
        #[arg(long)]
        json: bool,
    },
    /// Recompute every projection (applications, request keys, tickets, spot
    /// checks, dishonesty records, data sources, access index) from the
    /// entries of a stopped node's data folder; report what differs (exit 65).
    Rebuild {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Replace the checkpoint key; the change is logged and signed by the old key.
    RotateKey {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = server::DEFAULT_NODE_ID)]
        node_id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file; exit 64 naming file and line when it is wrong.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory and print its version digest; also report
    /// departments, queries and verifications nobody serves.
    Check {
        dir: PathBuf,
        /// Compare with the data sources registered in this (stopped) node's
        /// data folder; without it, with the built-in mock departments.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Make a policy-signing key pair: DIR/policy-signing.key (private,
    /// owner-only) and DIR/policy-signing.vkey (for `serve --policy-key`).
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The signer's name in the verifier key and in the log.
        #[arg(long, default_value = proofgate::security::policy_signing::DEFAULT_KEY_NAME)]
        name: String,
    },
    /// Sign a policy folder's version: writes DIR/policy.sig.
    Sign {
        dir: PathBuf,
        /// The private key from `policy keygen`.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// The signer's name [default: from the .vkey beside the key]
        #[arg(long)]
        name: Option<String>,
    },
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
            config,
            listen,
            data_dir,
            policies,
            policy_keys,
            node_id,
            metrics_listen,
            no_mock_departments,
            insecure_plaintext,
        } => {
            let flags = Flags {
                listen,
                data_dir,
                policies,
                policy_keys,
                node_id,
                metrics_listen,
                no_mock_departments,
                insecure_plaintext,
            };
            let node = match config::resolve(config.as_deref(), &config::process_env(), &flags) {
                Ok(node) => node,
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match server::serve_until_signal(node.serve).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::MockDepartment {
            name,
            listen,
            gateway,
            certs,
            insecure_plaintext,
        } => {
            let tls = if insecure_plaintext {
                None
            } else {
                match proofgate::security::TlsFiles::load(
                    &certs,
                    &proofgate::departments::department_identity(&name),
                ) {
                    Ok(files) => Some(files),
                    Err(e) => {
                        eprintln!(
                            "proofgate: {e} (run `proofgate dev-certs` or start the gateway once)"
                        );
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            };
            let fixture = match builtin_fixture(&name) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let mock = match RunningMock::start(fixture, listen, Some(gateway.clone()), tls).await {
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
            server::wait_for_signal().await;
            mock.stop().await;
            ExitCode::SUCCESS
        }
        Command::Policy {
            command: PolicyCommand::Check { dir, data_dir },
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
                    let (sources, against) = match &data_dir {
                        Some(d) => match proofgate::audit::AuditStore::open(&d.join("log"))
                            .and_then(|s| s.data_sources())
                        {
                            Ok(sources) => (
                                sources,
                                format!("data sources registered in {}", d.display()),
                            ),
                            Err(e) => {
                                eprintln!("proofgate: {e}");
                                return ExitCode::from(exit::of_store(&e));
                            }
                        },
                        None => (
                            proofgate::departments::mock::builtin_sources(),
                            "the built-in mock departments".to_owned(),
                        ),
                    };
                    let unserved = set.unserved(&sources);
                    for problem in &unserved {
                        eprintln!("warning: {problem}");
                    }
                    if !unserved.is_empty() {
                        eprintln!("{} item(s) not served by {against}", unserved.len());
                    }
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
        Command::Policy {
            command: PolicyCommand::Keygen { out, name },
        } => ExitCode::from(server::policy_commands::keygen(&out, &name)),
        Command::Policy {
            command: PolicyCommand::Sign { dir, key, name },
        } => ExitCode::from(server::policy_commands::sign(&dir, &key, name.as_deref())),
        Command::Audit { command } => audit(command).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match config::load(Some(&file), &config::process_env()) {
            Ok(node) => {
                let o = &node.serve;
                println!("{}: valid", file.display());
                println!("  listen           {}", o.listen);
                println!("  data_dir         {}", o.data_dir.display());
                println!(
                    "  policies         {}",
                    o.policies
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "./policies, else the compiled-in sample".into())
                );
                println!("  node_id          {}", o.node_id);
                println!(
                    "  policy keys      {}",
                    if o.policy_keys.is_empty() {
                        "none: policy sets load unsigned".to_owned()
                    } else {
                        let keys: Vec<_> = o
                            .policy_keys
                            .iter()
                            .map(|k| k.display().to_string())
                            .collect();
                        format!("{} (every set must be signed)", keys.join(", "))
                    }
                );
                println!("  mutual TLS       {}", o.tls);
                println!("  mock departments {}", o.mock_departments);
                println!("  max in flight    {}", o.max_in_flight);
                println!(
                    "  metrics          {}",
                    o.metrics_listen
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "off".into())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("proofgate: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Stats { data_dir, json } => {
            let today = proofgate::policy::calendar::format_date(
                proofgate::policy::calendar::civil_date_cst(proofgate::clock::system_now_unix_ms()),
            );
            match proofgate::audit::data_dir_records(&data_dir)
                .and_then(|records| proofgate::operations::stats::statistics(records, &today))
            {
                Ok(stats) => {
                    if json {
                        println!("{}", proofgate::operations::stats::to_json(&stats));
                    } else {
                        print!("{}", proofgate::operations::stats::to_table(&stats));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::from(exit::of_records(&e))
                }
            }
        }
        Command::DevCerts { dir, issue } => {
            let result = match issue {
                None => proofgate::security::ensure_dev_certs(
                    &dir,
                    &proofgate::departments::mock::dev_identities(),
                )
                .map(|made| {
                    if made {
                        format!(
                            "development CA and certificates written to {}",
                            dir.display()
                        )
                    } else {
                        format!(
                            "{} already has a CA; pass --issue NAME to add a certificate",
                            dir.display()
                        )
                    }
                }),
                Some(identity) => proofgate::security::issue(
                    &dir,
                    &identity,
                    proofgate::security::Validity::Normal,
                )
                .map(|path| format!("issued {}", path.display())),
            };
            match result {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::from(EXIT_CONFIG)
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
            certs,
            insecure_plaintext,
            concurrency,
            seconds,
            matter,
            fanout,
        } => {
            let mut departments = Vec::new();
            for item in fanout {
                let Some((name, uri)) = item.split_once('=') else {
                    eprintln!("proofgate: --fanout takes NAME=URI items, got `{item}`");
                    return ExitCode::from(EXIT_CONFIG);
                };
                departments.push((name.to_owned(), uri.to_owned()));
            }
            let options = proofgate::bench::BenchOptions {
                endpoint,
                concurrency,
                duration: Duration::from_secs(seconds),
                matter,
                fanout: departments,
                certs: (!insecure_plaintext).then_some(certs),
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

fn open_records(
    source: &LogSource,
) -> Result<proofgate::audit::Records, proofgate::audit::RecordError> {
    match (&source.data_dir, &source.file) {
        (Some(dir), _) => proofgate::audit::data_dir_records(dir),
        (None, Some(file)) => proofgate::audit::file_records(file),
        (None, None) => unreachable!("clap requires one source"),
    }
}

fn progress(what: &'static str) -> impl FnMut(u64) {
    let started = std::time::Instant::now();
    move |n| {
        eprintln!(
            "{what}: {n} entries ({:.0}/s)",
            n as f64 / started.elapsed().as_secs_f64().max(1e-9)
        )
    }
}

/// Prints an offline audit report; exit 65 when it found a problem or failed.
fn finish_report(result: Result<(String, bool), proofgate::audit::RecordError>) -> ExitCode {
    match result {
        Ok((text, ok)) => {
            print!("{text}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DATA)
            }
        }
        Err(e) => {
            eprintln!("proofgate: {e}");
            ExitCode::from(EXIT_DATA)
        }
    }
}

async fn audit(command: AuditCommand) -> ExitCode {
    use proofgate::audit::{replay_records, report, verify_records};
    let started = std::time::Instant::now();
    match command {
        AuditCommand::Export { data_dir, out } => {
            let written = proofgate::audit::data_dir_records(&data_dir)
                .and_then(|records| proofgate::audit::export(records, &out));
            match written {
                Ok((entries, checkpoints)) => {
                    println!(
                        "exported {entries} entries and {checkpoints} checkpoints to {}",
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::from(exit::of_records(&e))
                }
            }
        }
        AuditCommand::Verify { source, vkey, json } => {
            let vkey = vkey.map(|v| std::fs::read_to_string(&v).unwrap_or(v).trim().to_owned());
            let result = open_records(&source)
                .and_then(|records| verify_records(records, vkey.as_deref(), progress("verified")));
            let seconds = started.elapsed().as_secs_f64();
            finish_report(result.map(|r| {
                let text = if json {
                    format!("{}\n", report::verify_json(&r, seconds))
                } else {
                    report::verify_table(&r, seconds)
                };
                (text, r.ok())
            }))
        }
        AuditCommand::Replay { source, json } => {
            let result = open_records(&source)
                .and_then(|records| replay_records(records, progress("replayed")));
            let seconds = started.elapsed().as_secs_f64();
            finish_report(result.map(|r| {
                let text = if json {
                    format!("{}\n", report::replay_json(&r, seconds))
                } else {
                    report::replay_table(&r, seconds)
                };
                (text, r.discrepancies.is_empty())
            }))
        }
        AuditCommand::Rebuild { data_dir, json } => {
            match proofgate::audit::rebuild_data_dir(&data_dir) {
                Ok(r) => {
                    let seconds = started.elapsed().as_secs_f64();
                    if json {
                        println!("{}", report::rebuild_json(&r, seconds));
                    } else {
                        print!("{}", report::rebuild_table(&r, seconds));
                    }
                    if r.consistent() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_DATA)
                    }
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::from(exit::of_store(&e))
                }
            }
        }
        AuditCommand::RotateKey { data_dir, node_id } => {
            match proofgate::security::rotate_log_key(&data_dir, &node_id).await {
                Ok(vkey) => {
                    println!("new checkpoint key: {vkey}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proofgate: {e}");
                    ExitCode::from(exit::of_log_key(&e))
                }
            }
        }
    }
}
