//! The `proofgate` command: parse arguments, load the configuration, set up
//! tracing, hand over to the library ([`proofgate::cli`], one function per
//! subcommand), and map the result to an exit code (64 bad configuration or
//! arguments, 65 bad data, 69 cannot bind, the store is in use, etcd is
//! unreachable or the node id is taken in the cluster, 1 anything
//! else; see README "Exit codes").

use std::process::ExitCode;

use clap::Parser;

use proofgate::cli::{
    self, AuditCommand, Cli, ClusterCommand, Command, ConfigCommand, PolicyCommand,
};
use proofgate::{config, server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(server::exit::FAILURE);
        }
    };
    let result = runtime.block_on(run(cli.command));
    ExitCode::from(cli::finish(result))
}

async fn run(command: Command) -> Result<cli::Report, cli::CliError> {
    match command {
        Command::Serve(args) => {
            let env = config::process_env();
            let node = config::resolve(args.config.as_deref(), &env, &args.flags())?;
            cli::node::serve(node).await
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => cli::node::config_check(&file),
        Command::DevCerts(args) => cli::node::dev_certs(&args),
        Command::Keygen { data_dir, node_id } => cli::node::keygen(&data_dir, &node_id),
        Command::Witness(args) => cli::node::witness(&args).await,
        Command::MockDepartment {
            name,
            listen,
            gateway,
            certs,
            insecure_plaintext,
            capacity_per_second,
        } => {
            let certs = (!insecure_plaintext).then_some(certs.as_path());
            cli::node::mock_department(&name, listen, &gateway, certs, capacity_per_second).await
        }
        Command::Policy {
            command: PolicyCommand::Check { dir, data_dir },
        } => cli::policy::check(&dir, data_dir.as_deref()),
        Command::Policy {
            command:
                PolicyCommand::GenerateJinhua {
                    out_dir,
                    proofs,
                    matters,
                },
        } => cli::policy::generate_jinhua(&out_dir, proofs, matters),
        Command::Policy {
            command: PolicyCommand::Keygen { out, name },
        } => cli::policy::keygen(&out, &name),
        Command::Policy {
            command: PolicyCommand::Sign { dir, key, name },
        } => cli::policy::sign(&dir, &key, name.as_deref()),
        Command::Audit { command } => match command {
            AuditCommand::Export { data_dir, out } => cli::audit::export(&data_dir, &out),
            AuditCommand::Verify { cluster, json, .. } if cluster.cluster => {
                cli::cluster_audit::verify(&cluster, json).await
            }
            AuditCommand::Verify {
                source,
                vkey,
                witnesses,
                quorum,
                sample_signatures,
                timing,
                json,
                ..
            } => {
                let quorum = quorum.map(|quorum| cli::audit::Quorum { witnesses, quorum });
                let how = cli::audit::VerifyHow {
                    sample_signatures,
                    timing,
                };
                cli::audit::verify_with(&source, vkey, quorum, how, json)
            }
            AuditCommand::Replay { source, json } => cli::audit::replay(&source, json),
            AuditCommand::Rebuild { data_dir, json } => cli::audit::rebuild(&data_dir, json),
            AuditCommand::Usage { data_dir, json } => cli::audit::usage(&data_dir, json),
            AuditCommand::Compact { data_dir } => cli::audit::compact(&data_dir),
            AuditCommand::Restore(args) => cli::audit::restore(&args).await,
            AuditCommand::RotateKey { data_dir, node_id } => {
                cli::audit::rotate_key(&data_dir, &node_id).await
            }
        },
        Command::Stats { cluster, json, .. } if cluster.cluster => {
            cli::cluster_audit::stats(&cluster, json).await
        }
        Command::Stats { data_dir, json, .. } => cli::audit::stats(&data_dir, json),
        Command::Bench(args) => cli::bench::run(args).await,
        Command::Cluster {
            command: ClusterCommand::Status { etcd, json },
        } => cli::cluster::status(&etcd, json).await,
    }
}
