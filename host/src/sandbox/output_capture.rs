//! Bounded capture of a guest's stdout and stderr: keeps the last bytes written, never
//! blocks or fails the guest, and counts what was dropped.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// An output stream for a guest that keeps only the tail of what the guest writes.
///
/// Cloning shares the buffer: hand one clone to WASI, keep one to read the tail.
#[derive(Clone, Debug)]
pub struct TailCapture {
    inner: Arc<Mutex<Tail>>,
}

#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    capacity: usize,
    total_written: u64,
}

impl TailCapture {
    /// A capture that keeps the last `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        TailCapture {
            inner: Arc::new(Mutex::new(Tail {
                bytes: VecDeque::with_capacity(capacity.min(4096)),
                capacity,
                total_written: 0,
            })),
        }
    }

    fn append(&self, data: &[u8]) {
        let mut tail = self.inner.lock().unwrap();
        tail.total_written += data.len() as u64;
        let keep = data.len().min(tail.capacity);
        let overflow = (tail.bytes.len() + keep).saturating_sub(tail.capacity);
        tail.bytes.drain(..overflow);
        tail.bytes.extend(&data[data.len() - keep..]);
    }

    /// Forgets everything written so far (an instance kept for its next task).
    pub fn clear(&self) {
        let mut tail = self.inner.lock().unwrap();
        tail.bytes.clear();
        tail.total_written = 0;
    }

    /// The kept tail as text (invalid UTF-8 replaced), prefixed with a note of how many
    /// earlier bytes were dropped. Empty when the guest wrote nothing.
    pub fn tail_text(&self) -> String {
        let tail = self.inner.lock().unwrap();
        let (front, back) = tail.bytes.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).into_owned();
        let dropped = tail.total_written - tail.bytes.len() as u64;
        if dropped > 0 {
            format!("[{dropped} earlier bytes dropped]{text}")
        } else {
            text
        }
    }
}

impl IsTerminal for TailCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for TailCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for TailCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_tail_and_counts_the_rest() {
        let capture = TailCapture::new(8);
        capture.append(b"hello ");
        capture.append(b"world!");
        assert_eq!(capture.tail_text(), "[4 earlier bytes dropped]o world!");
        capture.append(&[b'z'; 100]);
        assert_eq!(capture.tail_text(), "[104 earlier bytes dropped]zzzzzzzz");
    }

    #[test]
    fn empty_capture_is_empty_text() {
        assert_eq!(TailCapture::new(8).tail_text(), "");
    }
}
