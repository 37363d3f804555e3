//! `vireo pki`: a CA, and server and client certificates signed by it, for a small deployment
//! (what libvirt's guide does with certtool), plus bearer tokens. Files are named as libvirt's
//! (cacert.pem, servercert.pem, clientcert.pem, ...); private keys are written mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Where `vireo pki` writes when no --dir is given, and where vireod's gateway looks.
pub const DEFAULT_DIR: &str = "/etc/pki/vireo";

#[derive(Debug, Subcommand)]
pub enum PkiAction {
    /// Create the CA (cacert.pem, cakey.pem) that signs servers and clients
    Ca {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The CA's subject CN
        #[arg(long, default_value = "Vireo CA")]
        name: String,
    },
    /// Issue the gateway's server certificate (servercert.pem, serverkey.pem) for a host name
    Server {
        /// The name clients connect to (https://NAME:16514); also its CN
        hostname: String,
        /// Further names or IP addresses the certificate is valid for
        #[arg(long = "alt-name", value_name = "NAME|IP")]
        alt_names: Vec<String>,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Issue a client certificate (clientcert.pem, clientkey.pem) whose CN names the client;
    /// [tls.clients] in the servers' config gives that name a role
    Client {
        name: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Write the client's files here instead of --dir (e.g. ~/.pki/vireo), with a copy of
        /// cacert.pem
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a bearer token and print it with the [tls.tokens] lines that accept it
    Token {
        name: String,
        #[arg(long, default_value = "readonly", value_parser = ["readonly", "operator", "admin"])]
        role: String,
    },
}

pub fn run(action: PkiAction) -> Result<(), String> {
    match action {
        PkiAction::Ca { dir, name } => create_ca(&dir, &name),
        PkiAction::Server {
            hostname,
            alt_names,
            dir,
        } => {
            let mut names = vec![hostname.clone()];
            names.extend(alt_names);
            issue(&dir, &dir, &hostname, names, Purpose::Server)
        }
        PkiAction::Client { name, dir, out } => {
            let out = out.unwrap_or_else(|| dir.clone());
            issue(&dir, &out, &name, Vec::new(), Purpose::Client)?;
            if out != dir && !out.join("cacert.pem").exists() {
                let ca = read(&dir.join("cacert.pem"))?;
                write_file(&out.join("cacert.pem"), &ca, 0o644)?;
            }
            Ok(())
        }
        PkiAction::Token { name, role } => {
            let token = vireo_runtime::access::random_token()?;
            let hex = vireo_runtime::access::token_sha256(&token);
            println!("token: {token}");
            println!();
            println!("# in vireod's config; clients send it with VIREO_TOKEN=...");
            println!("[tls.tokens.{name}]");
            println!("sha256 = \"{hex}\"");
            println!("role = \"{role}\"");
            Ok(())
        }
    }
}

#[derive(Clone, Copy)]
enum Purpose {
    Server,
    Client,
}

/// Valid from the start of this year for `years` years.
fn validity(params: &mut CertificateParams, years: i32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let year = 1970 + i32::try_from(now / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn create_ca(dir: &Path, name: &str) -> Result<(), String> {
    let cert_path = dir.join("cacert.pem");
    if cert_path.exists() {
        return Err(format!(
            "{} exists; a new CA would orphan every certificate it signed",
            cert_path.display()
        ));
    }
    let key = KeyPair::generate().map_err(|err| format!("generating the CA key: {err}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, 10);
    let cert = params
        .self_signed(&key)
        .map_err(|err| format!("signing the CA: {err}"))?;
    write_file(
        &dir.join("cakey.pem"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    println!("CA `{name}`: {}", cert_path.display());
    Ok(())
}

fn issue(
    ca_dir: &Path,
    out: &Path,
    name: &str,
    alt_names: Vec<String>,
    purpose: Purpose,
) -> Result<(), String> {
    let (stem, usage) = match purpose {
        Purpose::Server => ("server", ExtendedKeyUsagePurpose::ServerAuth),
        Purpose::Client => ("client", ExtendedKeyUsagePurpose::ClientAuth),
    };
    for existing in [format!("{stem}cert.pem"), format!("{stem}key.pem")] {
        let path = out.join(existing);
        if path.exists() {
            return Err(format!(
                "{} exists (in use by a server or another client?); remove it, or give --out, to issue a new one",
                path.display()
            ));
        }
    }
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&read(&ca_dir.join("cakey.pem"))?))
        .map_err(|err| format!("{}: {err}", ca_dir.join("cakey.pem").display()))?;
    let ca_pem = String::from_utf8_lossy(&read(&ca_dir.join("cacert.pem"))?).into_owned();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|err| format!("{}: {err}", ca_dir.join("cacert.pem").display()))?;
    let mut params = CertificateParams::new(alt_names)
        .map_err(|err| format!("invalid name or address: {err}"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    validity(&mut params, 3);
    let key = KeyPair::generate().map_err(|err| format!("generating a key: {err}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|err| format!("signing: {err}"))?;
    let cert_path = out.join(format!("{stem}cert.pem"));
    let key_path = out.join(format!("{stem}key.pem"));
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    println!("{stem} certificate for `{name}`: {}", cert_path.display());
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
}

/// Writes a new file with `mode` from the start, so a key is never readable by others.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}
