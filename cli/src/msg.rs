//! The one table of the client's words: every prompt, message and error
//! text of `bigtransfer client`, in English and in Russian, chosen by the
//! locale. Texts take their values as `{0}`, `{1}`, ... so that a language
//! may order them as it needs.
//!
//! Not for: the server's log (an operator's, in English) nor the engine's
//! own error details, which are quoted as they come.

use std::time::Duration;

use bigtransfer_core::{Error, ErrorKind};

/// The language of prompts and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Ru,
}

/// One message in both languages.
pub struct M {
    en: &'static str,
    ru: &'static str,
}

macro_rules! table {
    ($($name:ident: $en:expr, $ru:expr;)*) => {
        $(pub const $name: M = M { en: $en, ru: $ru };)*
        /// Every message, for the test that each has both languages.
        #[cfg(test)]
        pub const ALL: &[M] = &[$($name),*];
    };
}

table! {
    ASK_HOST: "Server IP address: ", "Введите IP-адрес сервера: ";
    ASK_PORT: "Server port: ", "Введите порт сервера: ";
    ASK_PATH: "Path to the file: ", "Введите путь к файлу: ";
    TRY_AGAIN: "Try again? [Y/n, or a new address HOST:PORT or :PORT]: ",
        "Попробовать снова? [Д/н, или новый адрес ХОСТ:ПОРТ или :ПОРТ]: ";
    HASHING: "CRC-32", "CRC-32";
    SENDING: "sending", "отправка";
    VERIFYING: "verifying", "проверка";
    ERROR: "error: {0}", "ошибка: {0}";
    RESUMING: "{0}: server already holds {1} of {2} bytes; resuming",
        "{0}: на сервере уже есть {1} из {2} байт; продолжаем";
    RETRYING: "{0}; retrying in {1} s, {2} of {3}", "{0}; повтор через {1} с, {2} из {3}";
    REFUSED_CONN: "server {0} is unreachable: connection refused, nothing listens on that port (wrong port, or the server is not running)",
        "сервер {0} недоступен: соединение отклонено, на этом порту никто не слушает (неверный порт или сервер не запущен)";
    UNREACHABLE_GAVE_UP: "server {0} is unreachable", "сервер {0} недоступен";
    RESUME_HINT: "the server keeps what it received; to resume, run: {0}",
        "сервер сохранил полученное; чтобы продолжить, выполните: {0}";
    TOKEN_HINT: "give the token with --token-file FILE or the BIGTRANSFER_TOKEN environment variable",
        "укажите токен: --token-file ФАЙЛ или переменная окружения BIGTRANSFER_TOKEN";
    HINT: "hint: {0}", "подсказка: {0}";
    EMPTY_ADDRESS: "the address is empty", "адрес пуст";
    BAD_HOST: "'{0}' is neither an IP address nor a host name that resolves",
        "'{0}' — не IP-адрес и не имя узла, которое удаётся разрешить";
    BAD_PORT: "'{0}' is not a port number (1-65535)", "'{0}' — не номер порта (1-65535)";
    PORT_ZERO: "port 0 is not a server port", "порт 0 не может быть портом сервера";
    TWO_PORTS: "--host {0} names port {1} but --port says {2}", "в --host {0} указан порт {1}, а в --port — {2}";
    EMPTY_PATH: "the path is empty", "путь пуст";
    NOT_REGULAR: "{0} is not a regular file", "{0} — не обычный файл";
    CANNOT_OPEN: "cannot open {0}: {1}", "не удаётся открыть {0}: {1}";
    CANNOT_READ: "cannot read {0}: {1}", "не удаётся прочитать {0}: {1}";
    END_OF_INPUT: "no answer to '{0}' (end of input)", "нет ответа на «{0}» (ввод закончился)";
    DONE: "CRC32_OK: {0}, {1} bytes, crc32 {2}, resumed from {3}, sent {4} bytes, {5} attempt(s), protocol {6}, {7} block(s) resent, {8}/s",
        "CRC32_OK: {0}, {1} байт, crc32 {2}, продолжено с {3}, отправлено {4} байт, попыток: {5}, протокол {6}, блоков переслано: {7}, {8}/с";
    STORED_UNCHANGED: "the server already held this content under this name: nothing stored, its file left untouched",
        "сервер уже хранил это содержимое под этим именем: ничего не записано, его файл не тронут";
    STORED_KEPT: "the server held a different file under this name: kept it as {0}",
        "под этим именем на сервере был другой файл: он сохранён как {0}";
    STORED_REPLACED: "the server held a different file under this name: replaced it (server runs with --overwrite)",
        "под этим именем на сервере был другой файл: он заменён (сервер запущен с --overwrite)";
    K_INVALID_INPUT: "invalid input", "неверные данные";
    K_SOURCE_FILE: "cannot read the file", "не удаётся прочитать файл";
    K_UNREACHABLE: "server unreachable", "сервер недоступен";
    K_CONNECTION_LOST: "connection lost", "соединение потеряно";
    K_PROTOCOL: "the server broke the protocol", "сервер нарушил протокол";
    K_REFUSED: "the server refused the upload", "сервер отказался принять файл";
    K_CRC_MISMATCH: "the CRC-32 did not match", "CRC-32 не совпала";
    K_STORAGE: "storage error", "ошибка хранилища";
    K_CANCELLED: "cancelled", "отменено";
    K_TIMED_OUT: "timed out", "истекло время ожидания";
    K_OTHER: "failed", "сбой";
    K_HOST_KEY: "the server's key is not the expected one", "ключ сервера не тот, что ожидался";
    FIRST_CONTACT: "first contact with {0}: its key {1} is now pinned in {2}; compare it with the fingerprint the server printed (bigtransfer fingerprint on the server)",
        "первое соединение с {0}: его ключ {1} теперь закреплён в {2}; сверьте его с отпечатком, который напечатал сервер (bigtransfer fingerprint на сервере)";
    FIRST_CONTACT_UNSTORED: "first contact with {0}: its key is {1} (not stored: no known-hosts file)",
        "первое соединение с {0}: его ключ {1} (не сохранён: нет файла known-hosts)";
    PLAINTEXT: "warning: {0} does not speak TLS (an older server, or --tls off): this upload goes UNENCRYPTED; use --require-tls to refuse that",
        "внимание: {0} не поддерживает TLS (старый сервер или --tls off): файл передаётся БЕЗ ШИФРОВАНИЯ; --require-tls запрещает это";
}

impl Lang {
    /// Russian when the locale that governs messages is Russian, as the
    /// original script's users expect; English otherwise.
    pub fn from_env() -> Lang {
        for var in ["LC_ALL", "LC_MESSAGES", "LANG"] {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    return if v.to_ascii_lowercase().starts_with("ru") {
                        Lang::Ru
                    } else {
                        Lang::En
                    };
                }
            }
        }
        Lang::En
    }

    /// The text of `m` in this language.
    pub fn s(self, m: &M) -> &'static str {
        match self {
            Lang::En => m.en,
            Lang::Ru => m.ru,
        }
    }

    /// The text of `m` with `{0}`, `{1}`, ... replaced by `args`.
    pub fn f(self, m: &M, args: &[&dyn std::fmt::Display]) -> String {
        let mut out = self.s(m).to_string();
        for (i, a) in args.iter().enumerate() {
            out = out.replace(&format!("{{{i}}}"), &a.to_string());
        }
        out
    }

    /// What went wrong, in words: the kind in this language, then the
    /// engine's detail (English; it quotes names and system errors), or the
    /// plain "connection refused" sentence for a port nobody listens on.
    pub fn describe(self, e: &Error, target: &str) -> String {
        if refused_connection(e) {
            return self.f(&REFUSED_CONN, &[&target]);
        }
        match self {
            Lang::En => e.to_string(),
            Lang::Ru => format!("{}: {e}", self.s(kind_text(e.kind()))),
        }
    }
}

/// Whether `e` is a connect(2) that the peer's host refused (no listener).
/// The engine's final "gave up" error carries the first one's text only,
/// so the system error's number in it counts too.
pub fn refused_connection(e: &Error) -> bool {
    use std::error::Error as _;
    let by_source = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
    let by_text = e
        .to_string()
        .contains(&format!("(os error {})", libc::ECONNREFUSED));
    e.kind() == ErrorKind::Unreachable && (by_source || by_text)
}

fn kind_text(k: ErrorKind) -> &'static M {
    match k {
        ErrorKind::InvalidInput => &K_INVALID_INPUT,
        ErrorKind::SourceFile => &K_SOURCE_FILE,
        ErrorKind::Unreachable => &K_UNREACHABLE,
        ErrorKind::ConnectionLost => &K_CONNECTION_LOST,
        ErrorKind::Protocol => &K_PROTOCOL,
        ErrorKind::Refused => &K_REFUSED,
        ErrorKind::CrcMismatch => &K_CRC_MISMATCH,
        ErrorKind::Storage => &K_STORAGE,
        ErrorKind::Cancelled => &K_CANCELLED,
        ErrorKind::TimedOut => &K_TIMED_OUT,
        ErrorKind::HostKey => &K_HOST_KEY,
        _ => &K_OTHER,
    }
}

/// Seconds as people read them: `2`, `0.5`, `1.5`.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if (s - s.round()).abs() < 0.05 {
        format!("{}", s.round() as u64)
    } else {
        format!("{s:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_both_languages_and_the_same_placeholders() {
        for m in ALL {
            assert!(!m.en.is_empty() && !m.ru.is_empty());
            for i in 0..10 {
                let p = format!("{{{i}}}");
                assert_eq!(
                    m.en.contains(&p),
                    m.ru.contains(&p),
                    "{p} in {:?} / {:?}",
                    m.en,
                    m.ru
                );
            }
        }
    }

    #[test]
    fn placeholders_are_filled() {
        let d = secs(Duration::from_secs(2));
        assert_eq!(
            Lang::En.f(&RETRYING, &[&"oops", &d, &1, &5]),
            "oops; retrying in 2 s, 1 of 5"
        );
        assert_eq!(
            Lang::Ru.f(
                &RETRYING,
                &[&"ой", &secs(Duration::from_millis(500)), &2, &5]
            ),
            "ой; повтор через 0.5 с, 2 из 5"
        );
    }

    #[test]
    fn errors_are_described_in_the_language() {
        let e = Error::new(ErrorKind::ConnectionLost, "connection to x lost");
        assert_eq!(Lang::En.describe(&e, "x"), "connection to x lost");
        assert_eq!(
            Lang::Ru.describe(&e, "x"),
            "соединение потеряно: connection to x lost"
        );
        let refused = Error::io(
            ErrorKind::Unreachable,
            "server 127.0.0.1:9 is unreachable",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert!(Lang::En.describe(&refused, "127.0.0.1:9").starts_with(
            "server 127.0.0.1:9 is unreachable: connection refused, nothing listens on that port"
        ));
    }
}
