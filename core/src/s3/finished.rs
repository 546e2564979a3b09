//! What the object-store backend keeps about objects it finished storing
//! (feature `s3`), like the local store's finished records
//! ([`crate::keep`]): a small record object `PREFIX.bigtransfer-done/NAME`
//! beside each object it stored, with the object's size, whole CRC-32,
//! block size and every block's CRC-32, and the object's ETag when it was
//! stored. It lets a re-send of the same content cost no data bytes, is
//! the reference a download's ranged GETs are checked against (a ranged
//! GET carries no checksum), and gives listings the CRC-32.
//!
//! Also the numbered versions of the store: a different content stored
//! under an existing name keeps the old object as `NAME.~N~` (a copy
//! inside the store, `CopyObject` or for objects over 5 GiB
//! `UploadPartCopy`, before the new upload is completed over the name),
//! unless the server overwrites. A free number is found with `HeadObject`
//! (not a conditional copy, which not every store has): the upload's lease
//! keeps two nodes from storing one name at once.
//!
//! Not for uploads in progress (their state objects, `storage`).

use super::{Client, ObjectInfo, S3Error, S3ErrorKind};

/// Where the finished records live, under the bucket prefix (beside
/// [`super::STATE_DIR`]; a stored name holds no '/', so never under it).
pub const DONE_DIR: &str = ".bigtransfer-done";

/// The most bytes of a record read (2^17 blocks of 9 bytes and a head).
const RECORD_LIMIT: u64 = 4 << 20;

const MAGIC: &str = "bigtransfer-s3-done 1";

/// What the server knows of an object it stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The object's size.
    pub size: u64,
    /// The whole object's CRC-32.
    pub crc32: u32,
    /// The block size of `crcs`; 0 when the upload had no blocks
    /// (protocol 1).
    pub block: u64,
    /// The CRC-32 of each block, in order.
    pub crcs: Vec<u32>,
    /// The object's ETag when it was stored: the record vouches for the
    /// object only while it is the same.
    pub etag: String,
    /// When it was stored, seconds since the Unix epoch.
    pub mtime: i64,
    /// A tree file's mtime at the client (ns): with the size, how an
    /// unchanged re-send is known (line `smtime`, absent otherwise).
    pub source_mtime: Option<i64>,
}

impl Finished {
    /// The record's text.
    pub fn encode(&self) -> String {
        let crcs: Vec<String> = self.crcs.iter().map(|c| format!("{c:08x}")).collect();
        let smtime = self
            .source_mtime
            .map(|t| format!("smtime {t}\n"))
            .unwrap_or_default();
        format!(
            "{MAGIC}\nsize {}\ncrc {:08x}\nblock {}\netag {}\nmtime {}\n{smtime}crcs {}\n",
            self.size,
            self.crc32,
            self.block,
            self.etag,
            self.mtime,
            crcs.join(",")
        )
    }

    /// A record from its text; `None` for anything damaged or inconsistent
    /// (a block count that does not fit the size).
    pub fn decode(text: &str) -> Option<Finished> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut kv = std::collections::BTreeMap::new();
        for line in lines {
            let (k, v) = line.split_once(' ')?;
            kv.insert(k, v);
        }
        let crcs: Option<Vec<u32>> = kv
            .get("crcs")?
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| u32::from_str_radix(c, 16).ok())
            .collect();
        let f = Finished {
            size: kv.get("size")?.parse().ok()?,
            crc32: u32::from_str_radix(kv.get("crc")?, 16).ok()?,
            block: kv.get("block")?.parse().ok()?,
            crcs: crcs?,
            etag: kv.get("etag")?.to_string(),
            mtime: kv.get("mtime")?.parse().ok()?,
            source_mtime: match kv.get("smtime") {
                Some(t) => Some(t.parse().ok()?),
                None => None,
            },
        };
        let fits = match f.block {
            0 => f.crcs.is_empty(),
            b => f.size.div_ceil(b) == f.crcs.len() as u64,
        };
        fits.then_some(f)
    }

    /// Whether the record vouches for the object as `head` describes it now.
    pub fn vouches_for(&self, head: &ObjectInfo) -> bool {
        self.size == head.size && same_etag(&self.etag, &head.etag)
    }
}

/// ETags compared without their quotes (listings and answers differ).
pub fn same_etag(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.replace("&quot;", "").replace('"', "");
    bare(a) == bare(b)
}

/// The key of `name`'s record.
pub fn record_key(name: &str) -> String {
    format!("{DONE_DIR}/{name}")
}

/// The record of `name`, if there is a readable one.
pub fn read_record(client: &Client, name: &str) -> Result<Option<Finished>, S3Error> {
    match client.get_small(&record_key(name), RECORD_LIMIT) {
        Ok((bytes, _)) => Ok(Finished::decode(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind == S3ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the record of `name`.
pub fn write_record(client: &Client, name: &str, f: &Finished) -> Result<(), S3Error> {
    client
        .put_small(
            &record_key(name),
            f.encode().as_bytes(),
            &super::Condition::None,
        )
        .map(drop)
}

/// The object `name` as the store describes it (`None`: not there).
pub fn head(client: &Client, name: &str) -> Result<Option<ObjectInfo>, S3Error> {
    match client.head_object(name) {
        Ok(i) => Ok(Some(i)),
        Err(e) if e.kind == S3ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The object `name` and the record that vouches for it, if both are there
/// and agree.
pub fn vouched(client: &Client, name: &str) -> Result<Option<(ObjectInfo, Finished)>, S3Error> {
    let Some(info) = head(client, name)? else {
        return Ok(None);
    };
    Ok(read_record(client, name)?
        .filter(|r| r.vouches_for(&info))
        .map(|r| (info, r)))
}

/// Keeps the object `name` as its next free numbered version (`CopyObject`;
/// an existing version is never overwritten) and returns the version's
/// name. Its record is carried over when it vouched for the object.
pub fn keep_version(client: &Client, name: &str, old: &ObjectInfo) -> Result<String, S3Error> {
    let mut n = next_version_hint(client, name)?;
    loop {
        let v = crate::keep::version_name(name, n);
        if v.len() > crate::name::MAX_NAME_BYTES {
            return Err(S3Error::other(
                format!("keep {name}"),
                format!("the name is too long to keep a numbered version ({v}); send it under a shorter name"),
            ));
        }
        if head(client, &v)?.is_some() {
            n += 1;
            continue;
        }
        client.copy_object(name, &v, old.size, super::client::MAX_COPY)?;
        if let Some(mut rec) = read_record(client, name)?.filter(|r| r.vouches_for(old)) {
            rec.etag = head(client, &v)?.map(|i| i.etag).unwrap_or_default();
            // Without it the version is still listed and served (its
            // reference read from it): not worth failing the upload.
            let _ = write_record(client, &v, &rec);
        }
        return Ok(v);
    }
}

/// One more than the highest version of `name` in the store, so versions
/// keep increasing even if older ones were deleted.
fn next_version_hint(client: &Client, name: &str) -> Result<u64, S3Error> {
    let prefix = format!("{name}.~");
    let mut highest = 0u64;
    let mut token: Option<String> = None;
    loop {
        let page = client.list_page(&prefix, true, token.as_deref())?;
        for e in &page.entries {
            let n = e
                .name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix('~'))
                .and_then(|r| r.parse::<u64>().ok());
            highest = highest.max(n.unwrap_or(0));
        }
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(highest.saturating_add(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_misfits_are_refused() {
        let f = Finished {
            size: 3 * 1024 + 5,
            crc32: 0xdead_beef,
            block: 1024,
            crcs: vec![1, 2, 3, 4],
            etag: "\"abc-2\"".into(),
            mtime: 1_700_000_000,
            source_mtime: None,
        };
        assert_eq!(Finished::decode(&f.encode()), Some(f.clone()));
        let tree = Finished {
            source_mtime: Some(1_600_000_000_123_456_789),
            ..f.clone()
        };
        assert_eq!(Finished::decode(&tree.encode()), Some(tree));
        let mut odd = f.clone();
        odd.crcs.pop();
        assert_eq!(Finished::decode(&odd.encode()), None);
        let v1 = Finished {
            block: 0,
            crcs: vec![],
            ..f.clone()
        };
        assert_eq!(Finished::decode(&v1.encode()), Some(v1));
        assert_eq!(Finished::decode("other\n"), None);
        assert!(same_etag("\"abc\"", "&quot;abc&quot;"));
        assert!(!same_etag("\"abc\"", "\"abd\""));
    }
}
