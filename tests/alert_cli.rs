//! `gocache-warden alert test`: one real delivery through each configured sink (a webhook on a
//! local HTTP server, and an exec sink), about the policy's first cache with its real figures.

mod support;

use std::io::{BufRead, BufReader, Read, Write};

#[test]
fn alert_test_delivers_through_every_sink() {
    let d = support::tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 50, 2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).expect("body");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .expect("reply");
        body
    });
    let url = d.path().join("url");
    std::fs::write(&url, format!("http://127.0.0.1:{port}/hook\n")).expect("url");
    let out = d.path().join("exec.json");
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"1GiB\"\n[alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n[alert.script]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat > {}\"]\n",
            cache.display(),
            url.display(),
            out.display()
        ),
    );
    let o = support::run(
        [
            "--policy".to_string(),
            p.display().to_string(),
            "alert".into(),
            "test".into(),
        ],
        &[],
    );
    let text = support::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", support::stderr(&o));
    assert!(
        text.contains("hook: delivered") && text.contains("script: delivered"),
        "{text}"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&server.join().expect("server")).expect("json body");
    assert_eq!(body["kind"], "test");
    assert_eq!(body["cache"].as_str(), cache.to_str());
    assert_eq!(body["size_bytes"].as_u64(), Some(support::du_bytes(&cache)));
    assert!(
        body["root"]["ls_line"]
            .as_str()
            .is_some_and(|l| l.starts_with('d')),
        "{body}"
    );
    let exec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("exec sink output")).expect("json");
    assert_eq!(exec["id"], "test");
    assert!(!text.contains("127.0.0.1"), "the URL is a secret: {text}");
}

/// Issue #23 (6): webhooks trust the system's CA store, as curl does — a corporate CA that an
/// operator installed there is trusted; one that is not there is not. The receiver is a real
/// HTTPS server on loopback whose certificate a test CA signed; that CA is in a test trust
/// store (`SSL_CERT_FILE`, which OpenSSL and curl read too) and nowhere else.
#[test]
fn webhooks_trust_the_systems_ca_store() {
    let d = support::tempdir();
    let dir = d.path();
    let sh = |script: &str| {
        let o = std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .expect("sh");
        assert!(o.status.success(), "{script}: {}", support::stderr(&o));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
        -subj '/CN=gocache-warden test CA' \
        -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj '/CN=127.0.0.1' 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null");
    let received = dir.join("received");
    let server = "import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(sys.argv[3], 'ab') as f:
            f.write(body + b'\\n')
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
";
    let mut child = std::process::Command::new("python3")
        .args(["-c", server])
        .arg(dir.join("srv.pem"))
        .arg(dir.join("srv.key"))
        .arg(&received)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 HTTPS server");
    let mut port = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("port");
    let _server = support::KillOnDrop(child);
    let url = dir.join("url");
    std::fs::write(&url, format!("https://127.0.0.1:{}/hook\n", port.trim())).expect("url");
    let cache = dir.join("cache");
    support::mkcache(&cache, 5, 1);
    let p = support::policy(
        dir,
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\n[alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n",
            cache.display(),
            url.display()
        ),
    );
    let alert_test = |store: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(support::bin());
        c.args(["--policy", p.to_str().expect("utf-8"), "alert", "test"])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        if let Some(s) = store {
            c.env("SSL_CERT_FILE", s);
        }
        c.output().expect("alert test")
    };

    // The machine's own store (Mozilla's roots and whatever the operator added) lacks the
    // test CA: the delivery fails on the certificate, and nothing arrives.
    let o = alert_test(None);
    let text = format!("{}{}", support::stdout(&o), support::stderr(&o));
    assert_ne!(o.status.code(), Some(0), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "the failure says why: {text}"
    );
    assert!(!received.exists(), "nothing delivered without trust");

    // The store that holds the test CA: delivered.
    let o = alert_test(Some(&dir.join("ca.pem")));
    let text = format!("{}{}", support::stdout(&o), support::stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("hook: delivered"), "{text}");
    let body = std::fs::read_to_string(&received).expect("received");
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("json");
    assert_eq!(v["kind"], "test", "{v}");
}
