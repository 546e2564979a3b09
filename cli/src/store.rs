//! `bigtransfer server --store s3://BUCKET[/PREFIX]`: where uploads are
//! kept when not in the local directory, parsed from the store URL and the
//! `--s3-*` flags (or their config-file keys). Credentials come only from
//! the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), never from the command line.
//!
//! Not for: talking to the store (the core's `s3` module).

/// A parsed `s3://` store URL: bucket, key prefix, and the endpoint and
/// region given in its query (`?endpoint=URL&region=R`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// Parses `s3://BUCKET[/PREFIX][?endpoint=URL&region=R]`; the prefix gets
/// a trailing '/' so its objects sit in a folder of their own.
pub fn parse(url: &str) -> Result<StoreUrl, String> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!(
            "--store {url:?}: only s3://BUCKET[/PREFIX] is supported (without --store, uploads go to --dir)"
        ));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(format!("--store {url:?}: no bucket name after s3://"));
    }
    let mut prefix = prefix.trim_matches('/').to_string();
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let (mut endpoint, mut region) = (None, None);
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("endpoint", v)) => endpoint = Some(v.to_string()),
            Some(("region", v)) => region = Some(v.to_string()),
            _ => {
                return Err(format!(
                "--store {url:?}: unknown setting {kv:?} (endpoint=URL and region=NAME are known)"
            ))
            }
        }
    }
    Ok(StoreUrl {
        bucket: bucket.to_string(),
        prefix,
        endpoint,
        region,
    })
}

/// The endpoint when none is given: AWS S3 in `region`.
pub fn default_endpoint(region: &str) -> String {
    format!("https://s3.{region}.amazonaws.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_with_and_without_prefix_and_settings() {
        let u = parse("s3://bkt").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bkt", ""));
        let u =
            parse("s3://bkt/up/loads/?endpoint=http://127.0.0.1:8333&region=eu-west-1").unwrap();
        assert_eq!(u.prefix, "up/loads/");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(u.region.as_deref(), Some("eu-west-1"));
        assert!(parse("/srv/x").unwrap_err().contains("only s3://"));
        assert!(parse("s3:///x").unwrap_err().contains("no bucket"));
        assert!(parse("s3://b?key=secret")
            .unwrap_err()
            .contains("unknown setting"));
    }
}
