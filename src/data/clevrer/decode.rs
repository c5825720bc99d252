//! One video file → one clip: decode with FFmpeg, keep `frames` frames spread
//! uniformly over the video, scale each to `size`×`size` RGB with swscale.
//!
//! Frame `i` of a clip is source frame `floor(i·(N−1)/(T−1))` of the N the
//! video holds (numpy's `linspace(0, N-1, T).astype(int)`, in exact integer
//! arithmetic); only those frames are converted to RGB.
//!
//! Aspect ratio is kept: `Fit::Pad` (the default) scales the whole frame to
//! fit and pads the rest with black — CLEVRER's 480×320 becomes 128×85 between
//! a 21-row black band above and a 22-row band below, and every object stays in
//! view, so the annotated positions always match the pixels. `Fit::Crop` scales
//! the short side to `size` and keeps the centre (objects near the left and
//! right edges are cut off).
//!
//! Two FFmpeg traps are handled here: a truncated mp4 whose index sits at the
//! front ("faststart") demuxes silently to fewer frames, so the decoded count is
//! compared with what the header promises (the smaller of the sample count and
//! duration × frame rate), and a shortfall skips the video; and a swscale context for
//! `Pixel::None` aborts the process, so the scaler is built from the first
//! decoded frame and frames without a pixel format are never scaled.

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Once;

/// How a frame whose aspect ratio is not 1:1 becomes square.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Scale the whole frame to fit, pad with black.
    Pad,
    /// Scale the short side to fit, cut the long side's ends.
    Crop,
}

impl Fit {
    pub fn name(self) -> &'static str {
        match self {
            Fit::Pad => "pad",
            Fit::Crop => "crop",
        }
    }
}

/// What the video itself says about its frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoInfo {
    /// Frames decoded (all of them, not just the sampled ones).
    pub frames: usize,
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    pub codec: String,
}

/// A decoded, sampled and scaled clip: `frames`×size×size×3 bytes.
pub struct DecodedClip {
    pub bytes: Vec<u8>,
    pub info: VideoInfo,
    /// The source frame behind each clip frame.
    pub frame_indices: Vec<usize>,
}

/// Why a video cannot be used (recorded in the manifest; the run goes on).
#[derive(Clone, Debug, PartialEq)]
pub struct BadVideo(pub String);

/// `count` frame indices spread uniformly over `total` frames, first and last included.
pub fn sample_indices(total: usize, count: usize) -> Vec<usize> {
    if count <= 1 || total <= 1 {
        return vec![0; count];
    }
    (0..count).map(|i| i * (total - 1) / (count - 1)).collect()
}

/// FFmpeg's global setup, once per process. FFmpeg's own log is silenced:
/// every failure comes back as a skip reason instead.
pub fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ffmpeg::init();
        ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
    });
}

/// Size of the scaled frame before padding or cropping to `size`×`size`.
fn scaled_size(width: u32, height: u32, size: usize, fit: Fit) -> (usize, usize) {
    let (w, h) = (width as f64, height as f64);
    let scale = match fit {
        Fit::Pad => size as f64 / w.max(h),
        Fit::Crop => size as f64 / w.min(h),
    };
    let side = |x: f64| ((x * scale).round() as usize).max(1);
    match fit {
        Fit::Pad => (side(w).min(size), side(h).min(size)),
        Fit::Crop => (side(w).max(size), side(h).max(size)),
    }
}

/// The scaler for one input geometry, and where its output lands in the square.
struct Scaler {
    context: scaling::Context,
    input: (Pixel, u32, u32),
    scaled: (usize, usize),
}

impl Scaler {
    fn new(frame: &ffmpeg::frame::Video, size: usize, fit: Fit) -> Result<Scaler, BadVideo> {
        let (format, width, height) = (frame.format(), frame.width(), frame.height());
        // The caller never passes Pixel::None (swscale would abort the process).
        let scaled = scaled_size(width, height, size, fit);
        let context = scaling::Context::get(
            format,
            width,
            height,
            Pixel::RGB24,
            scaled.0 as u32,
            scaled.1 as u32,
            scaling::Flags::AREA | scaling::Flags::ACCURATE_RND,
        )
        .map_err(|e| BadVideo(format!("cannot convert {format:?} {width}x{height} frames to RGB ({e})")))?;
        Ok(Scaler { context, input: (format, width, height), scaled })
    }

    /// Scales `frame` and writes it as size×size×3 bytes into `out` (zeroed beforehand).
    fn write(&mut self, frame: &ffmpeg::frame::Video, size: usize, out: &mut [u8]) -> Result<(), BadVideo> {
        let mut rgb = ffmpeg::frame::Video::empty();
        self.context.run(frame, &mut rgb).map_err(|e| BadVideo(format!("scaling failed ({e})")))?;
        let (sw, sh) = self.scaled;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        // Pad: the scaled frame sits centred in the square. Crop: the square sits centred in it.
        let (dst_x, dst_y) = (size.saturating_sub(sw) / 2, size.saturating_sub(sh) / 2);
        let (src_x, src_y) = (sw.saturating_sub(size) / 2, sh.saturating_sub(size) / 2);
        let (w, h) = (sw.min(size), sh.min(size));
        for row in 0..h {
            let src = &data[(src_y + row) * stride + src_x * 3..][..w * 3];
            out[((dst_y + row) * size + dst_x) * 3..][..w * 3].copy_from_slice(src);
        }
        Ok(())
    }
}

/// Decodes `path` into a clip of `frames` frames of `size`×`size` (see the module docs).
pub fn decode_clip(path: &Path, frames: usize, size: usize, fit: Fit) -> Result<DecodedClip, BadVideo> {
    init_ffmpeg();
    let bytes = std::fs::metadata(path).map_err(|e| BadVideo(format!("cannot read the file ({e})")))?.len();
    if bytes == 0 {
        return Err(BadVideo("zero-byte file".into()));
    }
    // ffmpeg-next panics on paths that are not UTF-8; `file:` stops a `:` in a name reading as a protocol.
    let name = path.to_str().ok_or_else(|| BadVideo("the path is not valid UTF-8; rename the file".into()))?;
    let mut input = ffmpeg::format::input(&format!("file:{name}"))
        .map_err(|e| BadVideo(format!("not a readable video: {e} (corrupt, truncated or not an mp4)")))?;
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| BadVideo("the file holds no video stream".into()))?;
    let stream_index = stream.index();
    // r_frame_rate, the stream's base rate: avg_frame_rate of an mp4 is derived from the very counts checked here.
    let rate = [stream.rate(), stream.avg_frame_rate()].into_iter().find(|r| r.numerator() > 0 && r.denominator() > 0);
    let fps = rate.map(f64::from).unwrap_or(0.0);
    // ffmpeg reports an unknown duration as AV_NOPTS_VALUE (i64::MIN).
    let seconds = (stream.duration() > 0).then(|| stream.duration() as f64 * f64::from(stream.time_base()));
    // The frames a complete file yields: the sample count, or fewer where the edit list
    // (the duration) ends before the last sample, as in files muxed without packet durations.
    let by_count = (stream.frames() > 0).then_some(stream.frames() as usize);
    let by_duration = seconds.filter(|_| fps > 0.0).map(|s| (s * fps).round() as usize).filter(|&n| n > 0);
    let promised = match (by_count, by_duration) {
        (Some(n), Some(d)) => n.min(d),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => return Err(BadVideo("the header gives neither a frame count nor a duration".into())),
    };
    if promised < frames {
        return Err(BadVideo(format!("{promised} frames, fewer than --frames {frames}")));
    }
    let codec_context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| BadVideo(format!("unsupported codec ({e})")))?;
    let codec = codec_context.id();
    let mut decoder =
        codec_context.decoder().video().map_err(|e| BadVideo(format!("cannot decode {codec:?} ({e})")))?;

    let mut sampler = Sampler::new(sample_indices(promised, frames), size, fit);
    let mut packet = ffmpeg::Packet::empty();
    loop {
        // Not `input.packets()`: it retries forever on a read error that is not EOF.
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(_) => break, // a damaged file: the frame count check below reports it
        }
        if packet.stream() != stream_index {
            continue;
        }
        decoder.send_packet(&packet).map_err(|e| {
            BadVideo(format!("decoding failed after {} frames ({e}); the file is corrupt", sampler.decoded))
        })?;
        sampler.drain(&mut decoder)?;
    }
    decoder.send_eof().map_err(|e| BadVideo(format!("decoding failed at the end ({e})")))?;
    sampler.drain(&mut decoder)?;

    let decoded = sampler.decoded;
    if decoded < promised {
        let duration = seconds.map(|s| format!(", {s:.2} s at {fps:.2} fps")).unwrap_or_default();
        return Err(BadVideo(format!(
            "truncated or corrupt: decoded {decoded} of the {promised} frames its header promises{duration}"
        )));
    }
    let (width, height) = sampler.first_size.unwrap_or((0, 0));
    let info = VideoInfo { frames: decoded, fps, width, height, codec: format!("{codec:?}").to_lowercase() };
    Ok(DecodedClip { bytes: sampler.out, info, frame_indices: sampler.wanted })
}

/// Counts decoded frames and scales the ones the clip keeps into `out`.
struct Sampler {
    wanted: Vec<usize>,
    size: usize,
    fit: Fit,
    out: Vec<u8>,
    /// Frames decoded so far, and the next clip frame to fill.
    decoded: usize,
    next: usize,
    first_size: Option<(u32, u32)>,
    scaler: Option<Scaler>,
    frame: ffmpeg::frame::Video,
}

impl Sampler {
    fn new(wanted: Vec<usize>, size: usize, fit: Fit) -> Sampler {
        let out = vec![0u8; wanted.len() * size * size * 3];
        let frame = ffmpeg::frame::Video::empty();
        Sampler { wanted, size, fit, out, decoded: 0, next: 0, first_size: None, scaler: None, frame }
    }

    /// Takes every frame the decoder has ready.
    fn drain(&mut self, decoder: &mut ffmpeg::decoder::Video) -> Result<(), BadVideo> {
        loop {
            match decoder.receive_frame(&mut self.frame) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => return Ok(()),
                Err(e) => return Err(BadVideo(format!("decoding failed after {} frames ({e})", self.decoded))),
            }
            let frame = &self.frame;
            if frame.format() == Pixel::None || frame.width() == 0 || frame.height() == 0 {
                continue; // not a picture; it does not count as a frame
            }
            self.first_size.get_or_insert((frame.width(), frame.height()));
            let frame_bytes = self.size * self.size * 3;
            while self.next < self.wanted.len() && self.wanted[self.next] == self.decoded {
                let geometry = (frame.format(), frame.width(), frame.height());
                if self.scaler.as_ref().is_none_or(|s| s.input != geometry) {
                    self.scaler = Some(Scaler::new(frame, self.size, self.fit)?);
                }
                if let Some(scaler) = self.scaler.as_mut() {
                    let slot = &mut self.out[self.next * frame_bytes..(self.next + 1) * frame_bytes];
                    scaler.write(frame, self.size, slot)?;
                }
                self.next += 1;
            }
            self.decoded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_span_the_video() {
        assert_eq!(sample_indices(30, 6), vec![0, 5, 11, 17, 23, 29]);
        assert_eq!(sample_indices(128, 20)[..3], [0, 6, 13]);
        assert_eq!(*sample_indices(128, 20).last().unwrap(), 127);
        assert_eq!(sample_indices(5, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(sample_indices(7, 1), vec![0]);
    }

    #[test]
    fn scaled_sizes_keep_aspect() {
        assert_eq!(scaled_size(480, 320, 128, Fit::Pad), (128, 85));
        assert_eq!(scaled_size(480, 320, 128, Fit::Crop), (192, 128));
        assert_eq!(scaled_size(320, 480, 128, Fit::Pad), (85, 128));
        assert_eq!(scaled_size(64, 64, 32, Fit::Crop), (32, 32));
    }
}
