//! The original script's interactive flow, fed through a pipe.

use crate::harness::*;

#[test]
fn english_prompts_from_a_pipe() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("p.bin");
    write_random(&src, 123_456, 7);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let answers = format!("127.0.0.1\n{}\n{}\n", srv.port(), src.display());
    let out = client(&[], answers.as_bytes(), &[("LANG", "en_US.UTF-8")]);
    assert_ok(&out);
    let so = stdout(&out);
    for p in ["Server IP address: ", "Server port: ", "Path to the file: "] {
        assert!(so.contains(p), "missing prompt {p:?} in {so:?}");
    }
    assert_same_file(&src, &t.path().join("store/p.bin"));
}

#[test]
fn russian_prompts_and_bad_answers_asked_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("r.bin");
    write_random(&src, 1000, 8);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let answers = format!(
        "\n127.0.0.1\n99999\nabc\n{}\n/no/such/file\n{}\n",
        srv.port(),
        src.display()
    );
    let out = client(&[], answers.as_bytes(), &[("LANG", "ru_RU.UTF-8")]);
    assert_ok(&out);
    let so = stdout(&out);
    assert_eq!(so.matches("Введите IP-адрес сервера: ").count(), 2, "{so}");
    assert_eq!(so.matches("Введите порт сервера: ").count(), 3, "{so}");
    assert_eq!(so.matches("Введите путь к файлу: ").count(), 2, "{so}");
    let se = stderr(&out);
    // Under a Russian locale the errors are Russian too (one message table).
    assert!(se.contains("'99999' — не номер порта (1-65535)"), "{se}");
    assert!(se.contains("не удаётся открыть /no/such/file: "), "{se}");
}

#[test]
fn unreachable_offers_to_try_again_then_exits_3() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("u.bin");
    write_random(&src, 10, 9);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Answers, then "yes" once, then "no".
    let answers = format!("127.0.0.1\n{port}\n{}\ny\nn\n", src.display());
    let out = client(&["--retries", "0"], answers.as_bytes(), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let ask = "Try again? [Y/n, or a new address HOST:PORT or :PORT]: ";
    assert_eq!(stdout(&out).matches(ask).count(), 2, "{}", stdout(&out));
    let se = stderr(&out);
    let refused = format!(
        "server 127.0.0.1:{port} is unreachable: connection refused, nothing listens on that port"
    );
    assert_eq!(se.matches(&refused).count(), 2, "{se}");
    assert!(
        se.ends_with(&format!("error: server 127.0.0.1:{port} is unreachable")),
        "{se}"
    );
}

#[test]
fn end_of_input_while_prompting_exits_2() {
    let out = client(&[], b"127.0.0.1\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("end of input"), "{}", stderr(&out));
}
