//! A plaintext server on loopback over a scratch directory, shared by the
//! core's integration tests: started on a free port, stopped and its
//! directory removed on drop. Not for TLS or object-store servers.

use std::path::PathBuf;
use std::sync::Arc;

use bigtransfer_core::server::TlsMode;
use bigtransfer_core::{Server, ServerConfig, StopHandle};

pub struct Served {
    /// The scratch directory (the store is `store` inside it).
    pub dir: PathBuf,
    pub store: PathBuf,
    pub port: u16,
    stop: StopHandle,
    serving: Option<std::thread::JoinHandle<bigtransfer_core::Result<()>>>,
}

impl Served {
    /// A server over `<tmp>/bt-<tag>-<pid>/store`, made empty first, its
    /// config adjusted by `tune`.
    pub fn start(tag: &str, tune: impl FnOnce(&mut ServerConfig)) -> Served {
        let dir = std::env::temp_dir().join(format!("bt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let mut cfg = ServerConfig::new(&store);
        cfg.bind = Some("127.0.0.1".parse().unwrap());
        cfg.port = 0;
        cfg.tls = TlsMode::Off;
        cfg.logger = Some(Arc::new(|_: &str| {}));
        tune(&mut cfg);
        let server = Server::bind(cfg).unwrap();
        let port = server.local_addr().unwrap().port();
        let stop = server.stop_handle();
        let serving = Some(std::thread::spawn(move || server.serve()));
        Served {
            dir,
            store,
            port,
            stop,
            serving,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.serving.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
