//! `/metrics` for scrapers that accept gzip (Prometheus asks for it on every scrape).
//!
//! The exposition goes out as one gzip member per part (a gzip stream may hold many,
//! and Go's reader, Prometheus's, reads them as one body). A part whose inputs are at
//! the version an earlier scrape compressed is sent as kept then, rendered and
//! compressed no more: in a settled cluster, and through an agents' reconnect storm
//! (the statuses stay; only the node view moves), a scrape renders little more than
//! pullwatch's own metrics and the node view, and a 5,000-image exposition of ~10 MB
//! leaves as ~400 KiB. Compressing at the fastest level costs less than sending the
//! text stored (miniz_oxide: about 5 ms against 23 ms for 6 MB of exposition), so
//! every part is compressed.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use pullwatch::locks::lock;

use crate::metrics::ScrapePosition;
use crate::pipeline::Pipeline;
use crate::store::ResultStore;

/// The parts kept between scrapes: part -> the version it was compressed at and its
/// whole gzip member. At most one member per part, so at most one compressed
/// exposition (a few hundred KiB at 5,000 images).
#[derive(Debug, Default)]
pub(crate) struct KeptParts {
    pub(crate) parts: Mutex<HashMap<usize, (u64, Bytes)>>,
}

impl KeptParts {
    /// The member kept for `part` at `version`, if any.
    fn kept(&self, part: usize, version: Option<u64>) -> Option<Bytes> {
        let version = version?;
        match lock(&self.parts).get(&part) {
            Some((at, member)) if *at == version => Some(member.clone()),
            _ => None,
        }
    }

    fn keep(&self, part: usize, version: u64, member: Bytes) {
        lock(&self.parts).insert(part, (version, member));
    }
}

/// The gzip member of the part being sent.
struct Member {
    encoder: GzEncoder<Vec<u8>>,
    /// With the version to keep it under: what of it went out so far.
    kept: Option<(u64, Vec<Bytes>)>,
}

/// One gzip-encoded scrape of one store version, a chunk at a time.
pub(crate) struct GzipScrape {
    pipeline: Arc<Pipeline>,
    store: Arc<ResultStore>,
    kept: Arc<KeptParts>,
    at: ScrapePosition,
    member: Option<Member>,
}

impl GzipScrape {
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        store: Arc<ResultStore>,
        kept: Arc<KeptParts>,
    ) -> Self {
        GzipScrape {
            pipeline,
            store,
            kept,
            at: ScrapePosition::default(),
            member: None,
        }
    }

    /// The next bytes of the gzip body (never empty); None once it is all out.
    pub(crate) fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            let member = match self.member.take() {
                Some(member) => member,
                None => {
                    if self.at.is_done(&self.pipeline.metrics) {
                        return None;
                    }
                    let part = self.at.part;
                    let version = self.pipeline.metrics.part_version(part, &self.store);
                    if let Some(member) = self.kept.kept(part, version) {
                        self.at.next_part();
                        return Some(Ok(member));
                    }
                    Member {
                        encoder: GzEncoder::new(Vec::new(), Compression::fast()),
                        kept: version.map(|version| (version, Vec::new())),
                    }
                }
            };
            match self.next_of(member) {
                Ok(Some(bytes)) if bytes.is_empty() => continue,
                Ok(Some(bytes)) => return Some(Ok(bytes)),
                Ok(None) => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Renders the next chunk of the current part into `member`: what of the member
    /// is ready to go (Some, maybe empty), or None when the part had nothing more.
    fn next_of(&mut self, mut member: Member) -> Result<Option<Bytes>, std::io::Error> {
        let part = self.at.part;
        let text = match self
            .pipeline
            .render_metrics_chunk(&self.store, &mut self.at)
        {
            Some(rendered) => rendered.map_err(std::io::Error::other)?,
            None => return Ok(None),
        };
        member.encoder.write_all(text.as_bytes())?;
        if self.at.part == part {
            // More of this part follows: send what the encoder has let out so far.
            let ready = Bytes::from(std::mem::take(member.encoder.get_mut()));
            if let Some((_, sent)) = &mut member.kept {
                sent.push(ready.clone());
            }
            self.member = Some(member);
            return Ok(Some(ready));
        }
        let last = Bytes::from(member.encoder.finish()?);
        if let Some((version, mut sent)) = member.kept {
            sent.push(last.clone());
            self.kept.keep(part, version, Bytes::from(sent.concat()));
        }
        Ok(Some(last))
    }
}
