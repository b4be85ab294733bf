//! The HTTP/1.1 client that POSTs each message to the worker.
//!
//! A delivery is one POST to one fixed address on the pod's own network, so the client is
//! small: a LIFO pool of keep-alive connections, and `ureq-proto`'s sans-IO state machine to
//! write the request and read the answer correctly (content-length and chunked bodies,
//! informational answers, `Connection: close`). A general-purpose client keeps a connection
//! task, channels and a body stream per request; this one keeps a socket per idle
//! connection and nothing else, which is most of the sidecar's memory at high concurrency.
//!
//! Nothing here follows a redirect: a 3xx is the worker's answer, and the contract retries
//! it (a client that followed a 302 would send a GET without the body, and that GET's 200
//! would ack a message nobody processed).

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, HeaderMap, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ureq_proto::client::state::{Cleanup, RecvBody, RecvResponse};
use ureq_proto::client::{Call, RecvBodyResult, RecvResponseResult, SendRequestResult};

/// Room for the request line and headers of a typical delivery; grown when a message's
/// attributes need more.
const PRELUDE_BUFFER: usize = 1024;
/// Room for a typical answer's status line and headers; grown when the answer is larger.
const ANSWER_BUFFER: usize = 1024;
/// Answers with bigger headers than this are not HTTP a worker would send.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// What the worker answered; the body is read (so the connection can be reused) but not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerResponse {
    pub status: u16,
    pub retry_after: Option<HeaderValue>,
}

/// Why an exchange produced no answer.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection could be made: nothing listens at the address (yet), or the connect
    /// timed out. The request was not sent.
    Connect(io::Error),
    /// The request may have been sent, but no complete answer came back.
    Broken(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "{e}"),
            Self::Broken(why) => f.write_str(why),
        }
    }
}

pub struct WorkerClient {
    uri: Uri,
    /// `host:port`, what the sockets connect to.
    address: String,
    connect_timeout: Duration,
    /// Idle keep-alive connections, the most recently used last.
    idle: Mutex<Vec<TcpStream>>,
    max_idle: usize,
}

impl WorkerClient {
    /// `url` must be `http://host[:port]/path`; `max_idle` bounds the connections kept open
    /// between deliveries (one per delivery slot is enough).
    pub fn new(url: &str, max_idle: usize, connect_timeout: Duration) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("{url} is not a URL: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "{url} is not an http:// URL; the worker is reached over plain HTTP inside the pod"
        );
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("{url} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            address: format!("{host}:{port}"),
            uri,
            connect_timeout,
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
        })
    }

    /// POSTs `body` with `headers` to the URL's path, or to `path` on the same host (a
    /// periodic task's), and returns the worker's answer. Dropping the future (a delivery
    /// timeout) closes the connection it was using.
    pub async fn post(
        &self,
        path: Option<&str>,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<WorkerResponse, ExchangeError> {
        self.exchange(Method::POST, path, headers, body).await
    }

    /// GETs `path` on the worker's host and port (its readiness path) and returns the status.
    pub async fn get(&self, path: &str) -> Result<u16, ExchangeError> {
        let response = self
            .exchange(Method::GET, Some(path), HeaderMap::new(), &[])
            .await?;
        Ok(response.status)
    }

    async fn exchange(
        &self,
        method: Method,
        path: Option<&str>,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<WorkerResponse, ExchangeError> {
        let (request, call) = self.encode(method, path, headers, body)?;
        let mut stream = match self.take_idle() {
            Some(stream) => stream,
            None => self.connect().await?,
        };
        stream
            .write_all(&request)
            .await
            .map_err(|e| broken("could not send the request", e))?;
        drop(request);
        let (response, reusable) = read_answer(&mut stream, call).await?;
        if reusable {
            self.give_back(stream);
        }
        Ok(response)
    }

    /// The whole request, prelude and body, in one buffer (one write, one packet for small
    /// messages), and the call ready to read the answer to it.
    fn encode(
        &self,
        method: Method,
        path: Option<&str>,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<(Vec<u8>, Call<RecvResponse>), ExchangeError> {
        // A GET (the readiness path) carries no body and says nothing of one.
        let has_body = method != Method::GET;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = match path {
            None => self.uri.clone(),
            Some(path) => self.uri_with_path(path)?,
        };
        *request.headers_mut() = headers;
        if has_body {
            request
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut call = Call::new(request)
            .map_err(|e| broken("could not build the request", e))?
            .proceed();
        let mut out = vec![0; PRELUDE_BUFFER + body.len()];
        let mut used = 0;
        while !call.can_proceed() {
            match call.write(&mut out[used..]) {
                Ok(n) if n > 0 => used += n,
                // A header line longer than what is left: make room and go on.
                Ok(_) | Err(ureq_proto::Error::OutputOverflow) => out.resize(out.len() * 2, 0),
                Err(e) => return Err(broken("could not write the request", e)),
            }
        }
        let next = call
            .proceed()
            .map_err(|e| broken("could not write the request", e))?;
        let call = match next {
            Some(SendRequestResult::SendBody(mut call)) => {
                if out.len() < used + body.len() {
                    out.resize(used + body.len(), 0);
                }
                let (_, written) = call
                    .write(body, &mut out[used..])
                    .map_err(|e| broken("could not write the request body", e))?;
                used += written;
                call.proceed()
            }
            Some(SendRequestResult::RecvResponse(call)) => Some(call),
            // No Expect header is ever sent, so the call never waits for a 100 Continue.
            Some(SendRequestResult::Await100(_)) | None => None,
        }
        .ok_or_else(|| ExchangeError::Broken("the request could not be written whole".into()))?;
        out.truncate(used);
        Ok((out, call))
    }

    /// The worker's URL with another path (and query). Only a path: a message cannot send
    /// the sidecar to another host.
    fn uri_with_path(&self, path: &str) -> Result<Uri, ExchangeError> {
        let not_a_path = |why: String| {
            ExchangeError::Broken(format!(
                "the message asks for delivery to `{path}`, which is not a URL path ({why})"
            ))
        };
        if !path.starts_with('/') {
            return Err(not_a_path("it must start with '/'".into()));
        }
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(
            path.parse()
                .map_err(|e: http::uri::InvalidUri| not_a_path(e.to_string()))?,
        );
        Uri::from_parts(parts).map_err(|e| not_a_path(e.to_string()))
    }

    /// The most recently used idle connection that the worker has not closed meanwhile.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().expect("idle connection lock");
        while let Some(stream) = idle.pop() {
            // An idle connection has nothing to read: readable means the worker closed it
            // (EOF) or broke it, and a request sent on it would fail for no fault of the
            // message.
            let mut probe = [0u8; 1];
            if let Err(e) = stream.try_read(&mut probe)
                && e.kind() == io::ErrorKind::WouldBlock
            {
                return Some(stream);
            }
        }
        None
    }

    /// `host:port` of the worker.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the worker accepts a connection now. The connection is kept for the next
    /// delivery, so asking costs the worker nothing.
    pub async fn accepts_connections(&self) -> io::Result<()> {
        match self.connect().await {
            Ok(stream) => {
                self.give_back(stream);
                Ok(())
            }
            Err(ExchangeError::Connect(error)) => Err(error),
            Err(other) => Err(io::Error::other(other.to_string())),
        }
    }

    fn give_back(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().expect("idle connection lock");
        if idle.len() < self.max_idle {
            idle.push(stream);
        }
    }

    async fn connect(&self) -> Result<TcpStream, ExchangeError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(ExchangeError::Connect(e)),
                Err(_) => {
                    return Err(ExchangeError::Connect(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", self.connect_timeout),
                    )));
                }
            };
        // Requests are written whole; Nagle would only hold the next one back.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Reads the answer to the request just sent. Returns it and whether the connection can
/// carry the next request.
async fn read_answer(
    stream: &mut TcpStream,
    mut call: Call<RecvResponse>,
) -> Result<(WorkerResponse, bool), ExchangeError> {
    let mut input = Vec::with_capacity(ANSWER_BUFFER);
    let (response, consumed) = loop {
        read_more(stream, &mut input).await?;
        let mut parsed = 0;
        // Informational answers (100 Continue, 103) are consumed one by one.
        let response = loop {
            match call.try_response(&input[parsed..], false) {
                Ok((used, Some(response))) => {
                    parsed += used;
                    break Some(response);
                }
                Ok((0, None)) => break None,
                Ok((used, None)) => parsed += used,
                Err(e) => return Err(broken("the worker's answer is not HTTP/1.1", e)),
            }
        };
        if let Some(response) = response {
            break (response, parsed);
        }
        input.drain(..parsed);
        if input.len() > MAX_ANSWER_HEAD {
            return Err(ExchangeError::Broken(format!(
                "the worker's answer has more than {MAX_ANSWER_HEAD} bytes of headers"
            )));
        }
    };
    let answer = WorkerResponse {
        status: response.status().as_u16(),
        retry_after: response.headers().get(RETRY_AFTER).cloned(),
    };
    input.drain(..consumed);
    let Some(next) = call.proceed() else {
        return Ok((answer, false));
    };
    let cleanup = match next {
        RecvResponseResult::Cleanup(cleanup) => cleanup,
        RecvResponseResult::Redirect(redirect) => redirect.proceed(),
        RecvResponseResult::RecvBody(body) => {
            // The status is the answer even if the body breaks off; only the connection is
            // lost then.
            match skip_body(stream, body, input).await {
                Some(cleanup) => cleanup,
                None => return Ok((answer, false)),
            }
        }
    };
    Ok((answer, !cleanup.must_close_connection()))
}

/// Reads and discards the answer's body. `None` when the connection cannot be reused:
/// a body delimited by the connection's close (not read; the worker's status is already
/// known) or one that broke off.
async fn skip_body(
    stream: &mut TcpStream,
    mut call: Call<RecvBody>,
    mut input: Vec<u8>,
) -> Option<Call<Cleanup>> {
    if matches!(call.body_mode(), ureq_proto::BodyMode::CloseDelimited) {
        return None;
    }
    let mut sink = [0u8; 1024];
    loop {
        let mut position = 0;
        while position < input.len() {
            let (used, _) = call.read(&input[position..], &mut sink).ok()?;
            if used == 0 {
                break;
            }
            position += used;
        }
        input.drain(..position);
        if call.can_proceed() {
            break;
        }
        read_more(stream, &mut input).await.ok()?;
    }
    match call.proceed()? {
        RecvBodyResult::Cleanup(cleanup) => Some(cleanup),
        RecvBodyResult::Redirect(redirect) => Some(redirect.proceed()),
    }
}

/// Appends what the socket has to `input`; an end of stream is an error, since an answer
/// was still expected.
async fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>) -> Result<(), ExchangeError> {
    if input.capacity() - input.len() < ANSWER_BUFFER / 2 {
        input.reserve(input.capacity().max(ANSWER_BUFFER));
    }
    match stream.read_buf(input).await {
        Ok(0) => Err(ExchangeError::Broken(
            "the worker closed the connection without answering".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(broken("the connection to the worker broke", e)),
    }
}

fn broken(what: &str, error: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Broken(format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// What a scripted worker saw: one entry per connection, each the requests it carried.
    type Seen = Arc<Mutex<Vec<Vec<String>>>>;

    /// A worker on a loopback port that answers each request with the next of `answers`
    /// (raw bytes, so every framing can be scripted) and closes a connection after an answer
    /// when `close_after` says so.
    async fn scripted_worker(
        answers: Vec<&'static str>,
        close_after: fn(usize) -> bool,
    ) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/deliver", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter().enumerate();
            while let Ok((mut stream, _)) = listener.accept().await {
                log.lock().unwrap().push(Vec::new());
                while let Some(request) = read_request(&mut stream).await {
                    log.lock().unwrap().last_mut().unwrap().push(request);
                    let Some((index, answer)) = answers.next() else {
                        return;
                    };
                    stream.write_all(answer.as_bytes()).await.unwrap();
                    if close_after(index) {
                        break;
                    }
                }
            }
        });
        (url, seen)
    }

    /// One request, head and body, as text; `None` at the end of the connection.
    async fn read_request(stream: &mut TcpStream) -> Option<String> {
        let mut data = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&data).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse().unwrap());
                if data.len() >= end + 4 + length {
                    return Some(text);
                }
            }
            if stream.read_buf(&mut data).await.ok()? == 0 {
                return None;
            }
        }
    }

    fn client(url: &str) -> WorkerClient {
        WorkerClient::new(url, 4, Duration::from_secs(2)).unwrap()
    }

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("ferry-message-id", HeaderValue::from_static("m-1"));
        headers
    }

    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\n\r\n";

    #[tokio::test]
    async fn a_delivery_is_one_post_with_host_length_and_body() {
        let (url, seen) = scripted_worker(vec![NO_CONTENT], |_| false).await;
        let answer = client(&url)
            .post(None, headers(), b"{\"a\":1}")
            .await
            .unwrap();
        assert_eq!(answer.status, 204);
        let request = seen.lock().unwrap()[0][0].clone();
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches("/deliver");
        assert!(
            request.starts_with("POST /deliver HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("host: {host}\r\n")), "{request}");
        assert!(request.contains("content-length: 7\r\n"), "{request}");
        assert!(request.contains("ferry-message-id: m-1\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
    }

    #[tokio::test]
    async fn a_periodic_task_goes_to_its_own_path_on_the_same_host_only() {
        let (url, seen) = scripted_worker(vec![NO_CONTENT], |_| false).await;
        let client = client(&url);
        let answer = client
            .post(Some("/tasks/cleanup?all=1"), headers(), b"x")
            .await
            .unwrap();
        assert_eq!(answer.status, 204);
        let request = seen.lock().unwrap()[0][0].clone();
        assert!(
            request.starts_with("POST /tasks/cleanup?all=1 HTTP/1.1\r\n"),
            "{request}"
        );
        // Not a path: refused before anything is sent, saying why.
        for bad in ["http://elsewhere/x", "tasks", "/a b"] {
            let error = client.post(Some(bad), headers(), b"x").await.unwrap_err();
            assert!(
                error.to_string().contains("which is not a URL path"),
                "{bad}: {error}"
            );
        }
        assert_eq!(seen.lock().unwrap().iter().flatten().count(), 1);
    }

    #[tokio::test]
    async fn connections_are_kept_alive_across_body_framings() {
        let (url, seen) = scripted_worker(
            vec![
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                NO_CONTENT,
            ],
            |_| false,
        )
        .await;
        let client = client(&url);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(client.post(None, headers(), b"{}").await.unwrap().status);
        }
        assert_eq!(statuses, [200, 200, 204]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one connection carried every request");
        assert_eq!(seen[0].len(), 3);
    }

    #[tokio::test]
    async fn a_connection_the_worker_closed_or_asked_to_close_is_not_reused() {
        let (url, seen) = scripted_worker(
            vec![
                // Closed by the worker after this answer, without saying so.
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                NO_CONTENT,
            ],
            |index| index == 0,
        )
        .await;
        let client = client(&url);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            // Gives the worker's close time to arrive, as it would between real deliveries.
            tokio::time::sleep(Duration::from_millis(50)).await;
            statuses.push(client.post(None, headers(), b"{}").await.unwrap().status);
        }
        assert_eq!(statuses, [200, 200, 204]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "a new connection after each close: {seen:?}");
    }

    #[tokio::test]
    async fn informational_answers_are_skipped_and_retry_after_is_kept() {
        let (url, _) = scripted_worker(
            vec![
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nbusy",
            ],
            |_| false,
        )
        .await;
        let answer = client(&url).post(None, headers(), b"{}").await.unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.retry_after, Some(HeaderValue::from_static("7")));
    }

    #[tokio::test]
    async fn the_status_is_the_answer_even_when_the_body_is_close_delimited() {
        let (url, seen) = scripted_worker(
            vec!["HTTP/1.1 422 Unprocessable\r\n\r\nnever ends", NO_CONTENT],
            |_| false,
        )
        .await;
        let client = client(&url);
        assert_eq!(
            client.post(None, headers(), b"{}").await.unwrap().status,
            422
        );
        assert_eq!(
            client.post(None, headers(), b"{}").await.unwrap().status,
            204
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "the first connection was not reused"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let error = client(&url).post(None, headers(), b"{}").await.unwrap_err();
        assert!(matches!(error, ExchangeError::Connect(_)), "{error:?}");
    }

    #[tokio::test]
    async fn an_answer_cut_off_is_broken() {
        let (url, _) = scripted_worker(vec!["HTTP/1.1 20"], |_| true).await;
        let error = client(&url).post(None, headers(), b"{}").await.unwrap_err();
        assert!(
            matches!(&error, ExchangeError::Broken(why) if why.contains("without answering")),
            "{error:?}"
        );
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_accepted() {
        let timeout = Duration::from_secs(1);
        for url in [
            "https://worker/",
            "unix:/tmp/worker",
            "http:///path",
            "not a url",
        ] {
            assert!(WorkerClient::new(url, 1, timeout).is_err(), "{url}");
        }
        assert!(WorkerClient::new("http://localhost:8080/", 1, timeout).is_ok());
    }
}
