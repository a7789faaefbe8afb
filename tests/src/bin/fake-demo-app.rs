//! A tiny stand-in for `demo-app`, used only by the harness's own tests to
//! exercise [`integration_tests::DemoApp`] without the real binary.
//!
//! It accepts `--listen ADDR` (other arguments are ignored) and serves
//! `GET /health` (200 `ok`) and `GET /args` (200, the command-line arguments
//! and the `RUST_LOG` value, one per line); everything else is 404. If the
//! environment variable `FAKE_DEMO_APP_EXIT` is set to a number, it exits
//! immediately with that code instead.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
    if let Some(code) = std::env::var("FAKE_DEMO_APP_EXIT")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        std::process::exit(code);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .expect("--listen ADDR is required");
    let listener = TcpListener::bind(listen).expect("failed to bind --listen address");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request_line = String::new();
        let mut reader = BufReader::new(&mut stream);
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // Skip the headers.
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => break,
                Ok(_) if header == "\r\n" || header == "\n" => break,
                Ok(_) => {}
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("");
        let (status, body) = match path {
            "/health" => ("200 OK", "ok".to_owned()),
            "/args" => {
                let mut lines = args.clone();
                lines.push(format!(
                    "RUST_LOG={}",
                    std::env::var("RUST_LOG").unwrap_or_default()
                ));
                ("200 OK", lines.join("\n"))
            }
            _ => ("404 Not Found", "not found".to_owned()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
