//! Log output captured in memory, for tests that read what the gateway logged (JSON lines,
//! as the binary writes them with `--log-format json`).

/// Log output captured in memory, for tests that read what the gateway logged.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

impl CapturedLogs {
    /// A subscriber that writes JSON lines here at `info`, as the binary logs with
    /// `--log-format json`; set it as the default for what a test should capture.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(self.clone())
            .with_ansi(false)
            .json()
            .flatten_event(false)
            .finish()
    }

    /// Whether anything logged so far contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes).contains(text)
    }

    /// The JSON log lines so far whose message contains `message`.
    pub fn lines_with(&self, message: &str) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(message))
            })
            .collect()
    }
}
