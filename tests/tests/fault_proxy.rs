//! The fault-injection proxy of the harness: every mode is shown to act on
//! real traffic to a real memcached (pass, delay with and without jitter,
//! blackhole as a one-instance partition that heals intact, refuse), and a
//! partition of one real demo-app instance from one node.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use integration_tests::{
    Cluster, DemoApp, FaultProxy, Memcached, ProxyMesh, ProxyMode, eventually, eventually_blocking, init_tracing,
};

/// Connect/read timeout of the raw exchanges.
const IO: Duration = Duration::from_secs(2);
/// Deadline for the demo-app instances to notice a partition (they probe
/// every second).
const WAIT: Duration = Duration::from_secs(15);

fn node_addr(node: &Memcached) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, node.port()))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO).unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    stream.set_read_timeout(Some(IO)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("send");
}

/// Reads exactly `expected.len()` bytes (within `IO`) and compares them.
fn expect_reply(stream: &mut TcpStream, expected: &[u8]) {
    stream.set_read_timeout(Some(IO)).unwrap();
    let mut got = vec![0; expected.len()];
    stream
        .read_exact(&mut got)
        .unwrap_or_else(|err| panic!("waiting for {:?}: {err}", String::from_utf8_lossy(expected)));
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected));
}

fn exchange(stream: &mut TcpStream, request: &[u8], reply: &[u8]) {
    send(stream, request);
    expect_reply(stream, reply);
}

/// Reads one `\r\n`-terminated line (within `IO`), terminator included.
fn read_line(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(IO)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0; 1];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("reading a reply line");
        line.push(byte[0]);
    }
    String::from_utf8(line).expect("reply line is UTF-8")
}

/// Asserts that nothing at all arrives within `timeout`.
fn expect_silence(stream: &mut TcpStream, timeout: Duration) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0; 256];
    match stream.read(&mut buf) {
        Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Ok(n) => panic!(
            "expected no reply within {timeout:?}, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(err) => panic!("expected no reply within {timeout:?}, got the error {err}"),
    }
}

/// Time of one `mn` round trip on an open connection.
fn round_trip(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    exchange(stream, b"mn\r\n", b"MN\r\n");
    started.elapsed()
}

#[test]
fn pass_forwards_both_ways_to_the_node() {
    let node = Memcached::start();
    let proxy = FaultProxy::start(node_addr(&node));
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert_ne!(proxy.port(), node.port());

    let mut conn = connect(proxy.addr());
    let request: &[u8] = b"ms via-proxy 5 T0\r\nhello\r\nmg via-proxy v\r\nmn\r\nversion\r\n";
    send(&mut conn, request);
    expect_reply(&mut conn, b"HD\r\nVA 5\r\nhello\r\nMN\r\n");
    let version = read_line(&mut conn);
    assert!(
        version.starts_with("VERSION ") && version.ends_with("\r\n"),
        "{version:?}"
    );
    let reply_len = "HD\r\nVA 5\r\nhello\r\nMN\r\n".len() + version.len();

    // The write really reached the node.
    assert_eq!(node.get_raw("via-proxy").as_deref(), Some(&b"hello"[..]));
    assert_eq!(proxy.connections_accepted(), 1);
    eventually_blocking(IO, "every byte counted", || {
        proxy.bytes_to_upstream() == request.len() as u64 && proxy.bytes_to_client() == reply_len as u64
    });
    assert_eq!(proxy.bytes_forwarded(), (request.len() + reply_len) as u64);
}

#[test]
fn delay_applies_to_both_directions_and_switches_on_open_connections() {
    let node = Memcached::start();
    let proxy = FaultProxy::start(node_addr(&node));
    let mut direct = connect(node_addr(&node));
    let mut proxied = connect(proxy.addr());
    round_trip(&mut proxied); // dialed upstream, warmed up

    proxy.set_mode(ProxyMode::Delay {
        fixed: Duration::from_millis(100),
        jitter: Duration::ZERO,
    });
    let fast = round_trip(&mut direct);
    let slow = round_trip(&mut proxied);
    assert!(fast < Duration::from_millis(100), "direct round trip took {fast:?}");
    assert!(
        slow >= Duration::from_millis(200),
        "a round trip through a 100 ms delay took {slow:?}, expected >= 200 ms (both directions)"
    );
    assert!(slow < Duration::from_secs(1), "{slow:?}");

    // Back to Pass: the same connection is fast again.
    proxy.set_mode(ProxyMode::Pass);
    let again = round_trip(&mut proxied);
    assert!(again < Duration::from_millis(100), "after Pass: {again:?}");
}

#[test]
fn jitter_never_reorders_a_stream() {
    const COMMANDS: usize = 30;
    let node = Memcached::start();
    let mut expected = Vec::new();
    for i in 0..COMMANDS {
        let value = format!("value-{i}");
        node.set_raw(&format!("k{i}"), value.as_bytes(), 0);
        expected.extend_from_slice(format!("VA {}\r\n{value}\r\n", value.len()).as_bytes());
    }
    let proxy = FaultProxy::start(node_addr(&node));
    let fixed = Duration::from_millis(20);
    proxy.set_mode(ProxyMode::Delay {
        fixed,
        jitter: Duration::from_millis(40),
    });
    let mut conn = connect(proxy.addr());
    // Separate small writes, 2 ms apart, so the proxy reads separate chunks
    // whose random delays (20..=60 ms) would reorder them if it let them.
    for i in 0..COMMANDS {
        send(&mut conn, format!("mg k{i} v\r\n").as_bytes());
        sleep(Duration::from_millis(2));
    }
    let last_sent = Instant::now();
    expect_reply(&mut conn, &expected);
    // The last reply took a delayed round trip after the last command.
    let elapsed = last_sent.elapsed();
    assert!(
        elapsed >= 2 * fixed,
        "the last reply arrived {elapsed:?} after the last command"
    );
}

#[test]
fn blackhole_partitions_one_instance_and_holds_its_bytes() {
    let cluster = Cluster::start(1);
    let node = cluster.node("n1");
    let mesh = ProxyMesh::start(&cluster, &["a", "b"]);
    assert_eq!(mesh.instances(), ["a", "b"]);
    let proxy = mesh.proxy("a", "n1");

    // A connection of instance `a` that works before the partition.
    let mut open = connect(proxy.addr());
    exchange(&mut open, b"mn\r\n", b"MN\r\n");
    // A byte is counted right after it was written, maybe after it was read.
    eventually_blocking(IO, "the exchange is counted", || proxy.bytes_forwarded() == 8);

    mesh.set("a", "n1", ProxyMode::Blackhole);
    assert_eq!(proxy.mode(), ProxyMode::Blackhole);
    assert_eq!(mesh.proxy("b", "n1").mode(), ProxyMode::Pass);
    let forwarded = proxy.bytes_forwarded();
    send(&mut open, b"ms held-open 3 T0\r\nold\r\n");
    // New connections are still accepted...
    let mut fresh = connect(proxy.addr());
    eventually_blocking(IO, "the new connection is accepted", || {
        proxy.connections_accepted() == 2
    });
    send(&mut fresh, b"ms held-new 3 T0\r\nnew\r\n");
    // ...but nothing is answered, and nothing reaches the node.
    expect_silence(&mut open, Duration::from_millis(500));
    expect_silence(&mut fresh, Duration::from_millis(500));
    assert_eq!(proxy.bytes_forwarded(), forwarded, "bytes crossed a blackholed proxy");
    assert_eq!(node.get_raw("held-open"), None);
    assert_eq!(node.get_raw("held-new"), None);

    // The same node still answers instance `b` (and the test, directly).
    let mut other = connect(mesh.proxy("b", "n1").addr());
    exchange(&mut other, b"mg held-open v\r\nmn\r\n", b"EN\r\nMN\r\n");
    assert!(node.version().is_ok());

    // Heal: the held commands are delivered, their replies arrive on the
    // held connections, and both streams go on intact.
    mesh.set("a", "n1", ProxyMode::Pass);
    expect_reply(&mut open, b"HD\r\n");
    expect_reply(&mut fresh, b"HD\r\n");
    assert_eq!(node.get_raw("held-open").as_deref(), Some(&b"old"[..]));
    assert_eq!(node.get_raw("held-new").as_deref(), Some(&b"new"[..]));
    exchange(&mut open, b"mg held-new v\r\n", b"VA 3\r\nnew\r\n");
    exchange(&mut fresh, b"mg held-open v\r\n", b"VA 3\r\nold\r\n");
}

#[test]
fn refuse_closes_the_port_and_open_connections_until_pass() {
    let node = Memcached::start();
    let proxy = FaultProxy::start(node_addr(&node));
    let addr = proxy.addr();
    let mut open = connect(addr);
    exchange(&mut open, b"mn\r\n", b"MN\r\n");
    assert_eq!(proxy.open_connections(), 1);

    proxy.set_mode(ProxyMode::Refuse);
    let err = TcpStream::connect_timeout(&addr, IO).expect_err("connecting to a refusing proxy must fail");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    // The open connection was closed (EOF or reset), not merely silent.
    open.set_read_timeout(Some(IO)).unwrap();
    let mut buf = [0; 16];
    match open.read(&mut buf) {
        Ok(0) => {}
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ) => {}
        other => panic!("expected the open connection to be closed, got {other:?}"),
    }
    assert_eq!(proxy.open_connections(), 0);
    assert!(node.version().is_ok(), "the node itself is up");

    // Pass again: the same port accepts and forwards.
    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(proxy.addr(), addr);
    let mut again = connect(addr);
    exchange(&mut again, b"mn\r\n", b"MN\r\n");
    assert_eq!(proxy.connections_accepted(), 2);
}

/// `available_nodes` from the app's `GET /stats`, sorted; `None` if the
/// request fails.
fn available_nodes(app: &DemoApp) -> Option<Vec<String>> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, app.port())), IO).ok()?;
    stream.set_read_timeout(Some(IO)).ok()?;
    let request = format!(
        "GET /stats HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        app.port()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let stats: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut nodes: Vec<String> = stats["available_nodes"]
        .as_array()?
        .iter()
        .map(|node| node.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    nodes.sort();
    Some(nodes)
}

fn lists(app: &DemoApp, node: &str) -> bool {
    available_nodes(app).is_some_and(|nodes| nodes.iter().any(|n| n == node))
}

/// A partition between instance a1 and node n1: a1 stops using n1, a2 keeps
/// it; healing the partition gives a1 its node back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_hides_a_node_from_one_demo_app_instance_only() {
    init_tracing();
    let cluster = Cluster::start(2);
    let mesh = ProxyMesh::start(&cluster, &["a1", "a2"]);
    let start = |route: &str| {
        let spec = mesh.spec_for(route);
        assert!(
            spec.starts_with("n1:127.0.0.1:") && spec.contains(",n2:127.0.0.1:"),
            "{spec}"
        );
        assert_ne!(spec, cluster.spec());
        DemoApp::start(&[
            "--memcached-nodes",
            &spec,
            "--route",
            route,
            "--operation-timeout-ms",
            "300",
        ])
    };
    let a1 = start("a1");
    let a2 = start("a2");
    let all = vec!["n1".to_owned(), "n2".to_owned()];
    eventually(WAIT, "both instances see n1 and n2", || {
        available_nodes(&a1).as_ref() == Some(&all) && available_nodes(&a2).as_ref() == Some(&all)
    })
    .await;

    mesh.set("a1", "n1", ProxyMode::Blackhole);
    eventually(WAIT, "a1 drops n1", || !lists(&a1, "n1")).await;
    assert_eq!(available_nodes(&a1), Some(vec!["n2".to_owned()]));
    assert_eq!(available_nodes(&a2).as_ref(), Some(&all), "a2 still reaches n1");
    assert!(
        mesh.proxy("a2", "n1").bytes_forwarded() > 0,
        "a2 talks to n1 through its proxy"
    );

    mesh.set("a1", "n1", ProxyMode::Pass);
    eventually(WAIT, "a1 lists n1 again after the partition heals", || {
        available_nodes(&a1).as_ref() == Some(&all)
    })
    .await;
    assert_eq!(available_nodes(&a2).as_ref(), Some(&all));
}

#[test]
fn dropping_the_proxy_closes_its_port_and_connections() {
    let node = Memcached::start();
    let proxy = FaultProxy::start(node_addr(&node));
    let addr = proxy.addr();
    let mut open = connect(addr);
    exchange(&mut open, b"mn\r\n", b"MN\r\n");
    let mut held = connect(addr);
    proxy.set_mode(ProxyMode::Blackhole);
    send(&mut held, b"mn\r\n");

    drop(proxy);
    let err = TcpStream::connect_timeout(&addr, IO).expect_err("nothing listens after the drop");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    for stream in [&mut open, &mut held] {
        stream.set_read_timeout(Some(IO)).unwrap();
        let mut buf = [0; 16];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }
}
