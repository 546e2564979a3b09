//! Store URLs, `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&page=N]`, made into
//! a client [`Config`] with credentials from the environment: one parser
//! for the CLI, the C API and Python.
//!
//! Not for: other schemes (a local directory is a path, not a URL).

use super::{Config, S3Error};

/// A parsed `s3://` store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, empty or ending in '/'.
    pub prefix: String,
    /// `?endpoint=` if given.
    pub endpoint: Option<String>,
    /// `?region=` if given.
    pub region: Option<String>,
    /// `?page=` if given: entries per page of the store's listings (1 to
    /// 1000; smaller only to exercise paging in tests).
    pub page: Option<u16>,
}

impl StoreUrl {
    /// Parses `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]`; the prefix
    /// gets a trailing '/' so its objects sit in a folder of their own.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(format!(
                "store {url:?}: only s3://BUCKET[/PREFIX] is supported (a local store is a directory)"
            ));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(format!("store {url:?}: no bucket name after s3://"));
        }
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        let (mut endpoint, mut region, mut page) = (None, None, None);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.to_string()),
                Some(("region", v)) => region = Some(v.to_string()),
                Some(("page", v)) => match v.parse::<u16>() {
                    Ok(n @ 1..=1000) => page = Some(n),
                    _ => return Err(format!("store {url:?}: page={v}: use 1 to 1000")),
                },
                _ => {
                    return Err(format!(
                        "store {url:?}: unknown setting {kv:?} (endpoint=URL, region=NAME and page=N are known)"
                    ))
                }
            }
        }
        Ok(StoreUrl {
            bucket: bucket.to_string(),
            prefix,
            endpoint,
            region,
            page,
        })
    }
}

/// The client configuration for store URL `url`: `endpoint` and `region`
/// given here win over the URL's; the region defaults to `us-east-1`, the
/// endpoint to AWS S3 in the region. Credentials from the environment.
pub fn store_config(
    url: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> Result<Config, S3Error> {
    let u = StoreUrl::parse(url).map_err(|m| S3Error::other("configuration", m))?;
    let region = region
        .map(str::to_string)
        .or(u.region)
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = endpoint
        .map(str::to_string)
        .or(u.endpoint)
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let mut cfg = Config::from_env(&endpoint, &region, &u.bucket, &u.prefix)?;
    if let Some(n) = u.page {
        cfg.page_size = n;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_with_and_without_prefix_and_settings() {
        let u = StoreUrl::parse("s3://bkt").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bkt", ""));
        let u =
            StoreUrl::parse("s3://bkt/up/loads/?endpoint=http://127.0.0.1:8333&region=eu-west-1")
                .unwrap();
        assert_eq!(u.prefix, "up/loads/");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(u.region.as_deref(), Some("eu-west-1"));
        assert_eq!(StoreUrl::parse("s3://b?page=2").unwrap().page, Some(2));
        assert!(StoreUrl::parse("s3://b?page=0")
            .unwrap_err()
            .contains("1 to 1000"));
        assert!(StoreUrl::parse("/srv/x")
            .unwrap_err()
            .contains("only s3://"));
        assert!(StoreUrl::parse("s3:///x")
            .unwrap_err()
            .contains("no bucket"));
        assert!(StoreUrl::parse("s3://b?key=secret")
            .unwrap_err()
            .contains("unknown setting"));
    }
}
