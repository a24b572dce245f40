//! Running and setting up a node: `serve`, `config check`, `dev-certs`,
//! `keygen`, `mock-department`.

use std::net::SocketAddr;
use std::path::Path;

use super::{CliError, DevCertsArgs, Report};
use crate::config::{self, NodeConfig};
use crate::departments::department_identity;
use crate::departments::mock::{builtin_fixture_with_capacity, dev_identities, RunningMock};
use crate::security::{self, TlsFiles, Validity};
use crate::server;

/// `proofgate serve`: runs the node until SIGINT / SIGTERM, then drains it.
pub async fn serve(node: NodeConfig) -> Result<Report, CliError> {
    server::serve_until_signal(node.serve).await?;
    Ok(Report::default())
}

/// `proofgate config check FILE`: the configuration `file` and the
/// `PROOFGATE_*` environment give, one setting per line.
pub fn config_check(file: &Path) -> Result<Report, CliError> {
    let node = config::load(Some(file), &config::process_env())?;
    let o = &node.serve;
    let policies = o
        .policies
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "./policies, else the compiled-in sample".into());
    let metrics = o
        .metrics_listen
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    let lines = [
        format!("{}: valid", file.display()),
        format!("  listen           {}", o.listen),
        format!("  data_dir         {}", o.data_dir.display()),
        format!("  policies         {policies}"),
        format!("  node_id          {}", o.node_id),
        format!("  mutual TLS       {}", o.tls),
        format!(
            "  certificates     {}",
            o.certs.as_ref().map_or_else(
                || format!(
                    "{} (made on first start)",
                    o.data_dir.join("certs").display()
                ),
                |d| format!("{} (shared PKI)", d.display())
            )
        ),
        format!(
            "  mirrors          {}",
            if o.mirror_off {
                "off".to_owned()
            } else if o.mirrors.is_empty() {
                "none (in a cluster with --certs: the next node)".to_owned()
            } else {
                o.mirrors
                    .iter()
                    .map(|m| match &m.vkey {
                        Some(_) => format!("{} (key pinned)", m.url),
                        None => m.url.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!(
            "  advertise        {}",
            o.advertise_address
                .clone()
                .unwrap_or_else(|| "https://<bound listen address>".into())
        ),
        format!("  mock departments {}", o.mock_departments),
        format!("  max in flight    {}", o.max_in_flight),
        format!(
            "  CRLs             {}",
            if o.crls.is_empty() {
                "none: certificates are not checked for revocation".to_owned()
            } else {
                o.crls
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!(
            "  witnesses        {}",
            if o.witnesses.is_empty() {
                "none: checkpoints are not cosigned".to_owned()
            } else {
                o.witnesses
                    .iter()
                    .map(|w| w.url.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        format!("  metrics          {metrics}"),
        format!(
            "  console          {}",
            match (o.console, o.metrics_listen) {
                (true, Some(addr)) => format!("http://{addr}/"),
                (true, None) => "off (no metrics listener)".to_owned(),
                (false, _) => "off".to_owned(),
            }
        ),
        format!(
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
        ),
    ];
    let text = lines.join("\n") + "\n";
    Ok(Report {
        text,
        ..Report::default()
    })
}

/// `proofgate dev-certs`: a development CA, its empty CRL and the
/// certificates of every standard identity in `dir` (unless it has a CA
/// already); or with `--issue` one more (or a new one) from the existing CA;
/// or with `--revoke` an identity's certificate added to `ca.crl`; or with
/// `--renew-crl` the list re-signed.
pub fn dev_certs(args: &DevCertsArgs) -> Result<Report, CliError> {
    let dir = args.dir.as_path();
    let now = crate::clock::system_now_unix_ms();
    let message = if let Some(identity) = &args.issue {
        let path = security::issue(dir, identity, Validity::Normal)?;
        format!(
            "issued {} (a certificate it replaced is kept beside as {identity}.<serial>.pem: revoke it with --revoke {identity} --serial <serial>)",
            path.display()
        )
    } else if let Some(identity) = &args.revoke {
        let done = security::crl::revoke_serial(dir, identity, args.serial.as_deref(), now)?;
        format!(
            "{} certificate {identity} (serial {}) in {}: CRL number {}, {} revoked, next update {}",
            if done.already {
                "already revoked:"
            } else {
                "revoked"
            },
            done.serial,
            done.path.display(),
            done.crl_number,
            done.revoked,
            crate::security::tls::rfc3339(now + security::crl::CRL_VALIDITY.as_millis() as i64)
        )
    } else if args.renew_crl {
        let (path, info) = security::crl::renew_crl(dir, now)?;
        format!(
            "re-signed {}: CRL number {}, {} revoked, next update {}",
            path.display(),
            info.crl_number,
            info.revoked.len(),
            info.next_update_unix_ms
                .map(crate::security::tls::rfc3339)
                .unwrap_or_default()
        )
    } else if security::ensure_dev_certs(dir, &dev_identities())? {
        format!(
            "development CA, revocation list and certificates written to {}",
            dir.display()
        )
    } else {
        format!(
            "{} already has a CA; pass --issue NAME to add a certificate, --revoke NAME to revoke one",
            dir.display()
        )
    };
    Ok(Report::line(message))
}

/// `proofgate keygen`: the node's signing and pseudonym keys in
/// `DATA_DIR/keys`, and the log's verifier key in `DATA_DIR/log.vkey`.
pub fn keygen(data_dir: &Path, node_id: &str) -> Result<Report, CliError> {
    let keys = data_dir.join("keys");
    security::generate_keys(&keys)?;
    let vkey = security::write_log_vkey(data_dir, node_id)?;
    Ok(Report::line(format_args!(
        "keys written to {}; the log's verifier key (also in {}):\n{vkey}",
        keys.display(),
        data_dir.join("log.vkey").display()
    )))
}

/// `proofgate witness`: a C2SP witness serving until SIGINT / SIGTERM.
pub async fn witness(args: &super::WitnessArgs) -> Result<Report, CliError> {
    let mut logs = Vec::new();
    for given in &args.logs {
        match std::fs::read_to_string(given) {
            Ok(text) => logs.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            ),
            Err(_) => logs.push(given.trim().to_owned()),
        }
    }
    let running = server::witness::start(server::witness::WitnessOptions {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        name: args.name.clone(),
        logs,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        clock: crate::clock::system(),
    })
    .await?;
    {
        // Printed now, not in the report: the witness serves until a signal.
        // A closed stdout must not stop it.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.vkey);
        let _ = writeln!(out, "witness serving on {}; Ctrl-C to stop", running.url);
        let _ = out.flush();
    }
    server::wait_for_signal().await;
    running.stop().await;
    Ok(Report::default())
}

/// `proofgate mock-department NAME`: one built-in mock department, registered
/// with `gateway`, serving until SIGINT / SIGTERM. Without `certs` it talks
/// plaintext.
pub async fn mock_department(
    name: &str,
    listen: SocketAddr,
    gateway: &str,
    certs: Option<&Path>,
    capacity_per_second: Option<u32>,
) -> Result<Report, CliError> {
    let tls = match certs {
        None => None,
        Some(dir) => Some(
            TlsFiles::load(dir, &department_identity(name)).map_err(CliError::DepartmentCerts)?,
        ),
    };
    let fixture = builtin_fixture_with_capacity(name, capacity_per_second)?;
    let mock = RunningMock::start(fixture, listen, Some(gateway.to_owned()), tls).await?;
    if let Err(e) = mock.register(gateway).await {
        mock.stop().await;
        return Err(e.into());
    }
    // Printed now, not in the report: the department serves until a signal.
    println!("mock department {name} serving on http://{}", mock.addr);
    server::wait_for_signal().await;
    mock.stop().await;
    Ok(Report::default())
}
