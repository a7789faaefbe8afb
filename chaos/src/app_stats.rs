//! `GET /stats` of a demo-app instance, read with a blocking request (the
//! fault thread and the verdict use it outside the load's runtime).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Bound of connecting to, and of reading from, an instance.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// One instance's statistics: the demo app's `/stats` JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppStats(serde_json::Value);

impl AppStats {
    /// Reads `GET /stats` from the instance listening on `addr`.
    ///
    /// # Errors
    ///
    /// A description of what failed (connection, status, JSON).
    pub fn fetch(addr: SocketAddr) -> Result<AppStats, String> {
        let mut stream =
            TcpStream::connect_timeout(&addr, STATS_TIMEOUT).map_err(|e| format!("GET /stats on {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(STATS_TIMEOUT))
            .map_err(|e| format!("GET /stats on {addr}: {e}"))?;
        let request = format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("GET /stats on {addr}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| format!("GET /stats on {addr}: {e}"))?;
        AppStats::parse(&response).map_err(|e| format!("GET /stats on {addr}: {e}"))
    }

    /// Parses a whole HTTP/1.1 response (`Connection: close`, not chunked).
    fn parse(response: &[u8]) -> Result<AppStats, String> {
        let text = String::from_utf8_lossy(response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("status line {:?}", head.lines().next().unwrap_or("")));
        }
        serde_json::from_str(body).map(AppStats).map_err(|e| e.to_string())
    }

    /// Counter `name` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.0.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0)
    }

    /// The largest value of probe `name` (e.g. `backup_time_us`; 0 when
    /// absent).
    pub fn probe_max(&self, name: &str) -> u64 {
        self.0
            .get(name)
            .and_then(|probe| probe.get("max"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// Whether the instance considers memcached node `id` available.
    pub fn has_node(&self, id: &str) -> bool {
        self.0
            .get("available_nodes")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|nodes| nodes.iter().any(|node| node.as_str() == Some(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_nodes() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"relocations\":3,\"available_nodes\":[\"n2\",\"n3\"],\"load_time_us\":{\"count\":2,\"max\":41000}}";
        let stats = AppStats::parse(response).unwrap();
        assert_eq!(stats.counter("relocations"), 3);
        assert_eq!(stats.counter("takeovers"), 0);
        assert_eq!(stats.probe_max("load_time_us"), 41_000);
        assert_eq!(stats.probe_max("backup_time_us"), 0);
        assert!(stats.has_node("n2"));
        assert!(!stats.has_node("n1"));
        assert!(AppStats::parse(b"HTTP/1.1 500 Oops\r\n\r\n{}").is_err());
        assert!(AppStats::parse(b"garbage").is_err());
    }
}
