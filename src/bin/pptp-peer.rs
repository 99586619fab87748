//! `pptp-peer`: scripted PPTP peers (RFC 2637) for the demo and end-to-end tests.
//!
//! The server plays a PAC, the client a PNS; both speak the control protocol over
//! TCP and enhanced GRE over a raw socket, put the sender's name in every GRE
//! payload, and print one JSON summary on stdout so tests can check who got what.
//! Progress goes to stderr (`RUST_LOG` sets the level; default info).

use clap::{Parser, Subcommand};

#[path = "pptp_peer/mod.rs"]
mod peer;

use peer::{client, raw, server, spray};

/// Scripted PPTP peers for testing a PPTP NAT ALG.
#[derive(Parser, Debug)]
#[command(name = "pptp-peer", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// PAC: accept control connections, answer calls, echo GRE back to its sender.
    Server(server::ServerOpts),
    /// PNS: place (or accept) calls, send GRE, collect the echoes.
    Client(client::ClientOpts),
    /// Send raw enhanced GRE with no call behind it.
    GreSend(raw::SendOpts),
    /// Print every GRE packet received, one JSON object per line.
    GreRecv(raw::RecvOpts),
    /// Send forged TCP segments (SYN floods, blind SYN-ACK/FIN/RST injection).
    Spray(spray::SprayOpts),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let code = match Cli::parse().cmd {
        Cmd::Server(o) => server::run(o),
        Cmd::Client(o) => client::run(o),
        Cmd::GreSend(o) => raw::send(o),
        Cmd::GreRecv(o) => raw::recv(o),
        Cmd::Spray(o) => spray::run(o),
    };
    std::process::exit(code);
}
