//! The `otad` command line: argument parsing and help texts; the work is in the library.
//!
//! Exit codes: 0 success, 1 the command ran and failed (or `verify` found an untrusted
//! file), 2 the command line itself was wrong.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use lexopt::prelude::*;

use otad::commands::{self, CaImport, InitOptions, VerifyOptions};
use otad::pki::keyfile::KeyPassword;
use otad::simulate::{self, SimulateOptions};

const HELP: &str = "\
otad: Apple over-the-air enrollment server with its own SCEP CA

usage: otad <command> [options]

commands:
  init          create a state dir: config, CA, RA and profile-signing identity
  serve         run the server
  check-config  check a config and everything it names, print the effective settings
  verify        check captured phase 2/3 request bodies, one JSON line per file
  simulate      walk a whole enrollment against a running server as a test device
  cert          list, revoke and import issued certificates
  request       list, approve and deny SCEP requests waiting for approval
  token         make, list, show and revoke enrollment tokens (the link that starts enrollment)
  user          add, remove and list the people who may log in to start an enrollment
  device        list the devices seen, show one; block, unblock and list blocked serials
  fsck          check the state dir's files against each other; --repair fixes the safe things

`otad <command> --help` explains each command's options; `otad --version` prints the version.
The admin commands (cert, request, token, user, device, fsck) take `--config FILE`, or
`--state DIR` for the otad.toml that `otad init` wrote in DIR; serve, check-config and
verify take the config file itself (DIR/otad.toml).
";

const INIT_HELP: &str = "\
usage: otad init --state DIR --url URL [--organization ORG]
                 [--ca-cert FILE --ca-key FILE [--ca-key-password-file FILE]]

Creates DIR with otad.toml (every key, commented), an RSA-2048 CA, a separate RA key and
certificate (SCEP decryption and CertRep signing) and a profile-signing identity. Private
keys are mode 0600. Refuses to touch a DIR that already holds a state.

With --ca-cert and --ca-key, takes over an existing CA instead of creating one (a
micromdm/scep depot's ca.pem and ca.key, say): the RA and profile signer are then issued by
it. The key must match the certificate, which must be a CA valid now that may sign CRLs.
The key is stored unencrypted in DIR/ca/ca.key (mode 0600). Symbolic links are refused
(the error gives the real path to use); a key readable by group or others is warned about.

  --state DIR          the state dir to create (may exist if empty)
  --url URL            the base URL devices reach otad at, e.g. https://otad.example.com
  --organization ORG   the organization in profiles and certificates (default: otad)
  --ca-cert FILE       an existing CA certificate, PEM
  --ca-key FILE        its private key, RSA of 2048 to 8192 bits, PEM: PKCS#1, PKCS#8,
                       encrypted PKCS#8 (PBES2) or OpenSSL's legacy encrypted PEM (a
                       micromdm/scep depot's ca.key)
  --ca-key-password-file FILE
                       the encrypted key's password, the file's first line; without it,
                       otad tries an empty one (scepserver's default), then asks on the
                       terminal (never give a password as an argument)
";

const SERVE_HELP: &str = "\
usage: otad serve --config FILE [--listen ADDR]

Serves the enrollment endpoints until stopped. Logs go to stderr. Unlike the admin
commands, serve takes no --state DIR: give --config DIR/otad.toml, the config otad init
wrote in the state dir.

  --config FILE   the otad.toml to use
  --listen ADDR   address:port to listen on, overriding http.listen
";

const CHECK_CONFIG_HELP: &str = "\
usage: otad check-config FILE

Checks FILE as `otad serve` would before it listens, without serving or writing anything:
every key (an unknown key, a wrong type or a bad value is an error naming the key and the
line), the state dir, the CA, RA and profile-signer certificates and keys, the profile
template and its variables, the hook programs, the TLS certificate and key, the webhook's
URL, secret file and CA file: the same start-up checks serve makes, by the same code. Then
prints the effective settings (every key, defaults filled in) as TOML on stdout, with the
static challenges and the webhook's credentials and query masked, and on stderr the
warnings otad serve would log at start-up, each as `otad: warning: ...`: a static
ota.challenge, a test device CA trusted (ota.extra_device_ca), MDM keys left unset,
scep.ra = false, no per-address bound (ota.max_live_challenges_per_client 0 or not below
ota.max_live_challenges) while enrollment is open to anyone, a hook or auth.command (or its
folder) writable by group or others or owned by another user than root or otad's, a
tls.key or events.webhook_secret_file readable by group or others, an unreadable users
file, webhook credentials over plain http. Exit 0 if all is well (warnings or not), 1 if
not. FILE is the state's otad.toml (DIR/otad.toml for the state dir otad init made).
";

const VERIFY_HELP: &str = "\
usage: otad verify [--config FILE] [--at RFC3339] FILE...

Checks captured phase 2/3 request bodies (CMS SignedData, BER or DER) and prints one JSON
object per file: file, trusted, phase, signer, attributes, error. Exit 0 only if every file
is trusted.

  --config FILE   also trust this server's CA (phase 3) and its ota.extra_device_ca
  --at TIME       verify as of this RFC 3339 time (captured certificates expire)
";

const SIMULATE_HELP: &str = "\
usage: otad simulate --url URL --device-ca DIR [--udid U] [--serial S]
                     [--signed-attributes] [--leaf-only] [--token T] [--user NAME]
                     [--ca-file FILE]
       otad simulate --url URL --device-ca DIR --devices N [--concurrency C] [--retry]
                     [--json] [--token T] [--user NAME]

Acts as an Apple device against a running server: phase 1, phase 2, SCEP, phase 3, then
decrypts the final profile and prints a summary. Exit 0 only if every phase succeeded.
With --devices, runs a fleet of N devices (each its own UDID and serial), C at a time, and
prints devices ok and failed (the first few reasons), devices per second and the p50 and p99
latency of each step; exit 0 only if every device went through.
On first use it creates a test device CA in DIR (device-ca.pem, device-ca.key); the server
trusts it only if its config lists DIR/device-ca.pem in ota.extra_device_ca.

  --url URL              the server's base URL (as in server.url)
  --device-ca DIR        where the test device CA lives
  --udid U               the device's UDID (default: a random one)
  --serial S             the device's serial number (default: a random one)
  --signed-attributes    sign phase 2 with signed attributes (as the iOS simulator does)
  --leaf-only            send only the device certificate, not its CA
  --token T              present enrollment token T in phase 1 (as the enroll link does)
  --user NAME            log in to phase 1 as NAME (HTTP Basic); the password is the first
                         line of stdin
  --devices N            simulate N devices (1 to 100000)
  --concurrency C        with --devices: C devices at once, on threads (default 1, at most
                         256)
  --retry                with --devices: a device whose step fails with a connection error
                         or a 5xx starts again from phase 1 after a short backoff (at most
                         10 attempts)
  --json                 with --devices: the summary as one JSON object
  --ca-file FILE         for an https:// URL: the PEM certificate(s) to check the server
                         with (without it, the system's root certificates)
";

enum Outcome {
    Done,
    Failed,
}

fn main() -> ExitCode {
    match run() {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(Usage(message)) => {
            eprintln!("otad: {message}");
            ExitCode::from(2)
        }
    }
}

struct Usage(String);

impl From<lexopt::Error> for Usage {
    fn from(err: lexopt::Error) -> Self {
        Usage(err.to_string())
    }
}

fn fail(message: String) -> Outcome {
    eprintln!("otad: {message}");
    Outcome::Failed
}

fn run() -> Result<Outcome, Usage> {
    let mut parser = lexopt::Parser::from_env();
    let command = match parser.next()? {
        Some(Value(command)) => command.string()?,
        Some(Long("help")) | Some(Short('h')) | None => {
            print!("{HELP}");
            return Ok(Outcome::Done);
        }
        Some(Long("version")) => {
            println!("otad {}", env!("CARGO_PKG_VERSION"));
            return Ok(Outcome::Done);
        }
        Some(other) => return Err(other.unexpected().into()),
    };
    match command.as_str() {
        "help" => {
            print!("{HELP}");
            Ok(Outcome::Done)
        }
        "init" => init(parser),
        "serve" => serve(parser),
        "check-config" => check_config(parser),
        "verify" => verify(parser),
        "simulate" => simulate(parser),
        "fsck" => {
            let args = state_as_config(parser.raw_args()?.collect());
            match otad::fsck::run(args) {
                otad::admin::Exit::Ok => Ok(Outcome::Done),
                otad::admin::Exit::Failed(message) => Ok(fail(message)),
                otad::admin::Exit::Usage(message) => Err(Usage(message)),
            }
        }
        "cert" | "request" | "token" | "user" | "device" => {
            let args = state_as_config(parser.raw_args()?.collect());
            let exit = match command.as_str() {
                "cert" => otad::admin::cert::run(args.clone()),
                "request" => otad::admin::request::run(args.clone()),
                "token" => otad::admin::token::run(args.clone()),
                "user" => otad::admin::user::run(args.clone()),
                _ => otad::admin::device::run(args.clone()),
            };
            record_admin(&command, &args, &exit);
            match exit {
                otad::admin::Exit::Ok => Ok(Outcome::Done),
                otad::admin::Exit::Failed(message) => Ok(fail(message)),
                otad::admin::Exit::Usage(message) => Err(Usage(message)),
            }
        }
        other => Err(Usage(format!("unknown command {other:?}; see otad --help"))),
    }
}

/// `--state DIR` is `--config DIR/otad.toml` (where `otad init` writes the config) for every
/// admin command, so each parses `--config` alone (`token` and `user` read both anyway).
fn state_as_config(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut items = args.into_iter();
    while let Some(arg) = items.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            out.push(arg);
            out.extend(items);
            break;
        }
        let dir = if text == "--state" {
            match items.next() {
                Some(dir) => PathBuf::from(dir),
                None => {
                    out.push(arg);
                    continue;
                }
            }
        } else if let Some(dir) = text.strip_prefix("--state=") {
            PathBuf::from(dir)
        } else {
            out.push(arg);
            continue;
        };
        out.push("--config".into());
        out.push(dir.join("otad.toml").into_os_string());
    }
    out
}

/// Records a state-changing admin command in the events log (the library knows which ones).
fn record_admin(command: &str, args: &[std::ffi::OsString], exit: &otad::admin::Exit) {
    match exit {
        otad::admin::Exit::Ok => otad::events::record_admin_command(command, args, None),
        otad::admin::Exit::Failed(why) => {
            otad::events::record_admin_command(command, args, Some(why))
        }
        otad::admin::Exit::Usage(_) => {}
    }
}

/// `--state DIR` given to a command that takes a config file: the usage error says which
/// file to give instead.
fn state_not_taken(command: &str, takes: &str, parser: &mut lexopt::Parser, help: &str) -> Usage {
    let instead = match parser.value() {
        Ok(dir) if !dir.to_string_lossy().starts_with('-') => {
            format!(": {}", PathBuf::from(dir).join("otad.toml").display())
        }
        _ => String::new(),
    };
    Usage(format!(
        "{command} takes {takes} (the state's otad.toml{instead}), not --state DIR\n\n{help}"
    ))
}

fn required<T>(value: Option<T>, flag: &str, help: &str) -> Result<T, Usage> {
    value.ok_or_else(|| Usage(format!("{flag} is required\n\n{help}")))
}

fn init(mut parser: lexopt::Parser) -> Result<Outcome, Usage> {
    let (mut state, mut url, mut organization) = (None, None, "otad".to_string());
    let (mut ca_cert, mut ca_key, mut password_file) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("state") => state = Some(PathBuf::from(parser.value()?)),
            Long("url") => url = Some(parser.value()?.string()?),
            Long("organization") => organization = parser.value()?.string()?,
            Long("ca-cert") => ca_cert = Some(PathBuf::from(parser.value()?)),
            Long("ca-key") => ca_key = Some(PathBuf::from(parser.value()?)),
            Long("ca-key-password-file") => password_file = Some(PathBuf::from(parser.value()?)),
            Long("help") | Short('h') => {
                print!("{INIT_HELP}");
                return Ok(Outcome::Done);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let import = match (ca_cert, ca_key) {
        (Some(certificate), Some(key)) => {
            // Asked for only if the key turns out to be encrypted, and only on a terminal.
            let password = match password_file {
                Some(file) => KeyPassword::File(file),
                None if std::io::stdin().is_terminal() => KeyPassword::Prompt,
                None => KeyPassword::NotGiven,
            };
            Some(CaImport {
                certificate,
                key,
                password,
            })
        }
        (None, None) if password_file.is_some() => {
            return Err(Usage(format!(
                "--ca-key-password-file goes with --ca-cert and --ca-key\n\n{INIT_HELP}"
            )))
        }
        (None, None) => None,
        _ => {
            return Err(Usage(format!(
                "--ca-cert and --ca-key go together\n\n{INIT_HELP}"
            )))
        }
    };
    let options = InitOptions {
        state: required(state, "--state", INIT_HELP)?,
        url: required(url, "--url", INIT_HELP)?,
        organization,
        import,
    };
    Ok(match commands::init(&options) {
        Ok(commands::Initialized { message, warnings }) => {
            for warning in &warnings {
                eprintln!("otad: warning: {warning}");
            }
            let event = otad::events::admin("init", "ok")
                .field("url", options.url.as_str())
                .field("organization", options.organization.as_str())
                .field("ca_imported", options.import.is_some());
            otad::events::record_for_config(&options.state.join("otad.toml"), event);
            println!("{message}");
            Outcome::Done
        }
        Err(err) => fail(err),
    })
}

fn serve(mut parser: lexopt::Parser) -> Result<Outcome, Usage> {
    let (mut config, mut listen) = (None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value()?)),
            Long("listen") => listen = Some(parser.value()?.string()?),
            Long("state") => {
                let takes = "--config FILE";
                return Err(state_not_taken("serve", takes, &mut parser, SERVE_HELP));
            }
            Long("help") | Short('h') => {
                print!("{SERVE_HELP}");
                return Ok(Outcome::Done);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let config = required(config, "--config", SERVE_HELP)?;
    Ok(match commands::serve(&config, listen.as_deref()) {
        Ok(()) => Outcome::Done,
        Err(err) => fail(err),
    })
}

fn check_config(mut parser: lexopt::Parser) -> Result<Outcome, Usage> {
    let mut config = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("help") | Short('h') => {
                print!("{CHECK_CONFIG_HELP}");
                return Ok(Outcome::Done);
            }
            Long("state") => {
                let (takes, help) = ("the config FILE", CHECK_CONFIG_HELP);
                return Err(state_not_taken("check-config", takes, &mut parser, help));
            }
            Value(file) if config.is_none() => config = Some(PathBuf::from(file)),
            other => return Err(other.unexpected().into()),
        }
    }
    let config = required(config, "FILE", CHECK_CONFIG_HELP)?;
    Ok(match commands::check_config(&config) {
        Ok(checked) => {
            print!("{}", checked.settings);
            for warning in &checked.warnings {
                eprintln!("otad: warning: {warning}");
            }
            eprintln!("otad: {}: ok", config.display());
            Outcome::Done
        }
        Err(err) => fail(err),
    })
}

fn verify(mut parser: lexopt::Parser) -> Result<Outcome, Usage> {
    let mut options = VerifyOptions {
        config: None,
        at: None,
        files: Vec::new(),
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => options.config = Some(PathBuf::from(parser.value()?)),
            Long("state") => {
                let takes = "--config FILE";
                return Err(state_not_taken("verify", takes, &mut parser, VERIFY_HELP));
            }
            Long("at") => {
                let text = parser.value()?.string()?;
                options.at = Some(commands::parse_rfc3339(&text).map_err(Usage)?);
            }
            Long("help") | Short('h') => {
                print!("{VERIFY_HELP}");
                return Ok(Outcome::Done);
            }
            Value(file) => options.files.push(PathBuf::from(file)),
            other => return Err(other.unexpected().into()),
        }
    }
    if options.files.is_empty() {
        return Err(Usage(format!("no FILE given\n\n{VERIFY_HELP}")));
    }
    Ok(match commands::verify(&options) {
        Ok((lines, all_trusted)) => {
            for line in lines {
                println!("{line}");
            }
            if all_trusted {
                Outcome::Done
            } else {
                Outcome::Failed
            }
        }
        Err(err) => fail(err),
    })
}

fn simulate(mut parser: lexopt::Parser) -> Result<Outcome, Usage> {
    let (mut url, mut device_ca_dir) = (None, None);
    let (mut udid, mut serial) = (None, None);
    let (mut signed_attributes, mut leaf_only) = (false, false);
    let (mut token, mut user) = (None, None);
    let (mut devices, mut concurrency, mut retry, mut as_json) = (None, None, false, false);
    let mut ca_file: Option<PathBuf> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("ca-file") => ca_file = Some(PathBuf::from(parser.value()?)),
            Long("devices") => devices = Some(parser.value()?.parse::<usize>()?),
            Long("concurrency") => concurrency = Some(parser.value()?.parse::<usize>()?),
            Long("retry") => retry = true,
            Long("json") => as_json = true,
            Long("token") => token = Some(parser.value()?.string()?),
            Long("user") => user = Some(parser.value()?.string()?),
            Long("url") => url = Some(parser.value()?.string()?),
            Long("device-ca") => device_ca_dir = Some(PathBuf::from(parser.value()?)),
            Long("udid") => udid = Some(parser.value()?.string()?),
            Long("serial") => serial = Some(parser.value()?.string()?),
            Long("signed-attributes") => signed_attributes = true,
            Long("leaf-only") => leaf_only = true,
            Long("help") | Short('h') => {
                print!("{SIMULATE_HELP}");
                return Ok(Outcome::Done);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let url = required(url, "--url", SIMULATE_HELP)?;
    if url.starts_with("https://") || ca_file.is_some() {
        match otad::httpclient::tls_config("--ca-file", ca_file.as_deref()) {
            Ok(config) => {
                otad::httpclient::enable_tls(std::sync::Arc::new(config));
            }
            Err(err) => return Ok(fail(err)),
        }
    }
    let mut options = SimulateOptions {
        url,
        device_ca_dir: required(device_ca_dir, "--device-ca", SIMULATE_HELP)?,
        udid,
        serial,
        signed_attributes,
        leaf_only,
        token,
        login: None,
    };
    if let Some(user) = user {
        let mut password = String::new();
        if let Err(err) = std::io::stdin().read_line(&mut password) {
            return Ok(fail(format!("stdin: cannot read the password: {err}")));
        }
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        options.login = Some((user, password));
    }
    let Some(devices) = devices else {
        if concurrency.is_some() || retry || as_json {
            return Err(Usage(
                "--concurrency, --retry and --json need --devices".to_string(),
            ));
        }
        return Ok(simulate_one(&options));
    };
    let fleet = simulate::fleet::FleetOptions {
        device: options,
        devices,
        concurrency: concurrency.unwrap_or(1),
        retry,
    };
    simulate::fleet::check_options(&fleet).map_err(Usage)?;
    Ok(match simulate::fleet::run(&fleet, &|_| {}) {
        Ok(summary) => {
            if as_json {
                println!("{}", summary.to_json());
            } else {
                print!("{summary}");
            }
            if summary.failed == 0 {
                Outcome::Done
            } else {
                Outcome::Failed
            }
        }
        Err(err) => fail(err),
    })
}

fn simulate_one(options: &SimulateOptions) -> Outcome {
    match simulate::run(options) {
        Ok(summary) => {
            print!("{summary}");
            Outcome::Done
        }
        Err(err) => fail(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<std::ffi::OsString> {
        list.iter().map(|w| w.into()).collect()
    }

    #[test]
    fn state_names_the_config_otad_init_wrote() {
        assert_eq!(
            state_as_config(words(&["list", "--state", "/var/lib/otad", "--json"])),
            words(&["list", "--config", "/var/lib/otad/otad.toml", "--json"])
        );
        assert_eq!(
            state_as_config(words(&["show", "--state=st", "ABC"])),
            words(&["show", "--config", "st/otad.toml", "ABC"])
        );
        // After `--` everything is an operand; a trailing `--state` is left for the parser's
        // own error.
        assert_eq!(
            state_as_config(words(&["show", "--", "--state"])),
            words(&["show", "--", "--state"])
        );
        assert_eq!(
            state_as_config(words(&["list", "--state"])),
            words(&["list", "--state"])
        );
    }
}
