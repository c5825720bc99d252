//! Small CLEVRER-shaped inputs made on the spot: mp4s encoded with ffmpeg-next
//! (the native `mpeg4` encoder is always there; `libx264` when FFmpeg has it)
//! and annotation JSON in the official schema. Shared by `tests/clevrer.rs`
//! and `benches/clevrer_decode.rs`.

#![allow(dead_code)]

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Codec {
    Mpeg4,
    H264,
}

impl Codec {
    fn id(self) -> ffmpeg::codec::Id {
        match self {
            Codec::Mpeg4 => ffmpeg::codec::Id::MPEG4,
            Codec::H264 => ffmpeg::codec::Id::H264,
        }
    }

    /// Whether this FFmpeg build can encode it.
    pub fn available(self) -> bool {
        simclr::data::clevrer::decode::init_ffmpeg();
        ffmpeg::encoder::find(self.id()).is_some()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct VideoSpec {
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: i32,
    pub codec: Codec,
    /// Put the index (moov) before the data, as web-ready mp4s do.
    pub faststart: bool,
    /// Give packets their duration (one frame), as a proper muxer does. Without it the
    /// mp4's edit list ends one frame early and players drop the last frame.
    pub packet_durations: bool,
}

/// Encodes `spec.frames` frames painted by `paint(frame, rgb)` (W×H×3 bytes) into an mp4 at `path`.
pub fn write_mp4(path: &Path, spec: VideoSpec, paint: impl Fn(usize, &mut [u8])) {
    simclr::data::clevrer::decode::init_ffmpeg();
    let (w, h) = (spec.width, spec.height);
    let mut octx = ffmpeg::format::output_as(&path, "mp4").expect("open mp4 for writing");
    let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let codec = ffmpeg::encoder::find(spec.codec.id()).expect("encoder present");
    let mut stream = octx.add_stream(codec).expect("add stream");
    let mut setup = ffmpeg::codec::context::Context::new_with_codec(codec).encoder().video().expect("video encoder");
    setup.set_width(w);
    setup.set_height(h);
    setup.set_format(Pixel::YUV420P);
    setup.set_time_base((1, spec.fps));
    setup.set_frame_rate(Some((spec.fps, 1)));
    setup.set_gop(12);
    if global_header {
        setup.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
    }
    let mut options = ffmpeg::Dictionary::new();
    match spec.codec {
        // Near-lossless, so decoded colours can be checked tightly.
        Codec::Mpeg4 => {
            setup.set_qmin(2);
            setup.set_qmax(2);
            setup.set_bit_rate(8_000_000);
        }
        Codec::H264 => {
            options.set("preset", "veryfast");
            options.set("crf", "18");
        }
    }
    let mut encoder = setup.open_with(options).expect("open encoder");
    stream.set_parameters(&encoder);
    stream.set_time_base((1, spec.fps));
    let mut header = ffmpeg::Dictionary::new();
    if spec.faststart {
        header.set("movflags", "faststart");
    }
    octx.write_header_with(header).expect("write header");
    let stream_time_base = octx.stream(0).expect("stream").time_base();

    let mut to_yuv = ffmpeg::software::scaling::Context::get(
        Pixel::RGB24,
        w,
        h,
        Pixel::YUV420P,
        w,
        h,
        ffmpeg::software::scaling::Flags::BILINEAR | ffmpeg::software::scaling::Flags::ACCURATE_RND,
    )
    .expect("scaler");
    let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, w, h);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    let write_packets = |encoder: &mut ffmpeg::encoder::Video, octx: &mut ffmpeg::format::context::Output| {
        let mut packet = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            if spec.packet_durations {
                packet.set_duration(1);
            }
            packet.rescale_ts((1, spec.fps), stream_time_base);
            packet.write_interleaved(octx).expect("write packet");
        }
    };
    for i in 0..spec.frames {
        paint(i, &mut pixels);
        let stride = rgb.stride(0);
        for (y, row) in pixels.chunks_exact((w * 3) as usize).enumerate() {
            rgb.data_mut(0)[y * stride..y * stride + row.len()].copy_from_slice(row);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        to_yuv.run(&rgb, &mut yuv).expect("rgb to yuv");
        yuv.set_pts(Some(i as i64));
        encoder.send_frame(&yuv).expect("encode");
        write_packets(&mut encoder, &mut octx);
    }
    encoder.send_eof().expect("flush encoder");
    write_packets(&mut encoder, &mut octx);
    octx.write_trailer().expect("write trailer");
}

/// Colour bars of the test videos: six vertical bars, 16 px wide in a 96 px frame.
pub const BARS: [[u8; 3]; 6] =
    [[230, 30, 30], [30, 200, 30], [30, 30, 230], [235, 235, 235], [230, 230, 30], [200, 30, 200]];

/// The grey of the lower half in frame `i`: the frame index, readable after decoding.
pub fn frame_grey(i: usize) -> u8 {
    (16 + 7 * i) as u8
}

/// Test pattern: colour bars in the top half, a grey encoding the frame index in the bottom half.
pub fn bars_and_index(width: usize, height: usize) -> impl Fn(usize, &mut [u8]) {
    move |i, rgb| {
        for y in 0..height {
            for x in 0..width {
                let c = if y < height / 2 {
                    BARS[(x * BARS.len() / width).min(BARS.len() - 1)]
                } else {
                    [frame_grey(i); 3]
                };
                rgb[(y * width + x) * 3..][..3].copy_from_slice(&c);
            }
        }
    }
}

/// A CLEVRER-like frame: a shaded grey floor and five coloured discs moving across it.
pub fn clevrer_like(width: usize, height: usize) -> impl Fn(usize, &mut [u8]) {
    move |i, rgb| {
        let t = i as f64;
        let discs: Vec<(f64, f64, f64, [f64; 3])> = (0..5)
            .map(|k| {
                let k = k as f64;
                let x = (0.15 + 0.17 * k + 0.004 * t * (1.0 + k * 0.3)) % 1.0 * width as f64;
                let y = (0.3 + 0.1 * k + 0.002 * t * (2.0 - k * 0.4)).rem_euclid(1.0) * height as f64;
                let colour =
                    [[170., 40., 40.], [40., 150., 60.], [50., 70., 180.], [190., 170., 60.], [120., 60., 150.]]
                        [k as usize];
                (x, y, 18.0 + 4.0 * k, colour)
            })
            .collect();
        for y in 0..height {
            for x in 0..width {
                let floor = 110.0 + 30.0 * (y as f64 / height as f64) - 10.0 * (x as f64 / width as f64);
                let mut c = [floor; 3];
                for &(cx, cy, r, colour) in &discs {
                    let d2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
                    if d2 < r * r {
                        let shade = 1.0 - 0.35 * (d2 / (r * r));
                        c = colour.map(|v| v * shade);
                    }
                }
                rgb[(y * width + x) * 3..][..3].copy_from_slice(&c.map(|v| v.clamp(0.0, 255.0) as u8));
            }
        }
    }
}

/// Object `j` at frame `f` in the fixture annotations.
pub fn location(f: usize, j: usize) -> [f64; 3] {
    [0.1 * f as f64 + j as f64, -(j as f64), 0.2]
}

pub fn velocity(j: usize) -> [f64; 3] {
    [2.5, 0.5 * j as f64, 0.0]
}

pub const COLORS: [&str; 4] = ["red", "blue", "green", "yellow"];
pub const SHAPES: [&str; 4] = ["cube", "sphere", "cylinder", "sphere"];
pub const MATERIALS: [&str; 4] = ["rubber", "metal", "rubber", "metal"];

/// An annotation in the official schema for a video of `frames` frames with
/// `objects` objects and the given collisions ((a, b), frame).
pub fn annotation(scene: u64, frames: usize, objects: usize, collisions: &[((i64, i64), usize)]) -> serde_json::Value {
    let trajectory: Vec<serde_json::Value> = (0..frames)
        .map(|f| {
            let states: Vec<serde_json::Value> = (0..objects)
                .map(|j| {
                    serde_json::json!({
                        "object_id": j, "location": location(f, j), "orientation": [0.0, 0.0, 0.1],
                        "velocity": velocity(j), "angular_velocity": [0.0, 0.0, 0.0], "inside_camera_view": f >= j,
                    })
                })
                .collect();
            serde_json::json!({ "frame_id": f, "objects": states })
        })
        .collect();
    serde_json::json!({
        "scene_index": scene,
        "video_filename": format!("video_{scene:05}.mp4"),
        "object_property": (0..objects).map(|j| serde_json::json!({
            "object_id": j, "color": COLORS[j], "material": MATERIALS[j], "shape": SHAPES[j],
        })).collect::<Vec<_>>(),
        "motion_trajectory": trajectory,
        "collision": collisions.iter().map(|&((a, b), f)| serde_json::json!({
            "object_ids": [a, b], "frame_id": f, "location": [1.0, 2.0, 0.2],
        })).collect::<Vec<_>>(),
    })
}
