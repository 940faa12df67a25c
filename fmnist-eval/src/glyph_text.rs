//! Text in bitmap plots, each glyph drawn where the font puts it.
//!
//! plotters 0.3.7 draws a glyph's pixels (ab_glyph's `OutlinedGlyph::draw`, relative to the
//! glyph's pixel bounds) from the pen position rounded down, without the bounds' left edge:
//! every glyph lands its left side bearing early, rounded down to whole pixels, which is one
//! pixel for `1`, `.`, `i`, `l` or `n` at 13 px and none for most others, so gaps open after
//! those letters ("21 2", "San dal", "0. 33"). [`GlyphText`] wraps a backend and draws text
//! itself: each glyph outlined at its exact pen position (advances and kerning, as plotters
//! measures the text), its pixels placed from its bounds. Everything else passes through.
use ab_glyph::{Font, FontRef, ScaleFont};
use plotters::prelude::DrawingBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

/// A drawing backend whose text is laid out glyph by glyph in `font`.
pub struct GlyphText<B> {
    inner: B,
    font: FontRef<'static>,
}

impl<B> GlyphText<B> {
    /// `inner`, drawing its text in `font` (a TrueType or OpenType font's bytes).
    pub fn new(inner: B, font: &'static [u8]) -> Self {
        GlyphText {
            inner,
            // The only caller passes the font compiled into the binary, known to parse.
            font: FontRef::try_from_slice(font).expect("the embedded font parses"),
        }
    }

    /// The pixels of `text` at `size` px (ab_glyph's scale, as plotters uses it): position
    /// relative to the text's top left and coverage in [0, 1], and the width plotters gives
    /// the text (advances and kerning).
    fn rasterize(&self, text: &str, size: f32) -> (Vec<(i32, i32, f32)>, i32) {
        let font = self.font.as_scaled(size);
        let (mut pen, mut prev) = (0f32, None);
        let mut pixels = Vec::new();
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(prev) = prev {
                pen += font.kern(prev, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(font.scale(), ab_glyph::point(pen, 0.0));
            if let Some(outline) = font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                // The vertical placement is plotters' own: the bounds' top below half the size.
                let (x0, y0) = (bounds.min.x as i32, (size / 2.0 + bounds.min.y) as i32);
                outline.draw(|x, y, coverage| {
                    pixels.push((x0 + x as i32, y0 + y as i32, coverage.min(1.0)));
                });
            }
            pen += font.h_advance(id);
        }
        (pixels, pen as i32)
    }
}

impl<B: DrawingBackend> DrawingBackend for GlyphText<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    /// As plotters draws text (anchor, rotation, clipping to the canvas), but for where each
    /// glyph's pixels go.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (pixels, width) = self.rasterize(text, style.size() as f32);
        // plotters' height of a line of text.
        let height = (style.size() / 1.24) as i32;
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        for (x, y, coverage) in pixels {
            let (x, y) = transform.transform(x + dx, y + dy);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if (0..w as i32).contains(&x) && (0..h as i32).contains(&y) {
                self.inner
                    .draw_pixel((x, y), color.mix(f64::from(coverage)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::FONT_BYTES as FONT;
    use plotters::prelude::*;

    /// The first column of each run of inked columns of `text` drawn black on white at `size`
    /// px, left-anchored at x = 10.
    fn ink_runs(text: &str, size: f64, glyph_text: bool) -> Vec<usize> {
        let (w, h) = (200u32, 40u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let style = ("sans-serif", size).into_font().color(&BLACK);
            let backend = BitMapBackend::with_buffer(&mut buf, (w, h));
            if glyph_text {
                let root = GlyphText::new(backend, FONT).into_drawing_area();
                root.draw_text(text, &style, (10, 10)).unwrap();
                root.present().unwrap();
            } else {
                let root = backend.into_drawing_area();
                root.draw_text(text, &style, (10, 10)).unwrap();
                root.present().unwrap();
            }
        }
        let inked = |x: u32| (0..h).any(|y| buf[((y * w + x) * 3) as usize] < 128);
        (0..w)
            .filter(|&x| inked(x) && (x == 0 || !inked(x - 1)))
            .map(|x| x as usize)
            .collect()
    }

    #[test]
    fn glyphs_sit_at_their_pen_positions() {
        crate::plots::register_font();
        // Where each glyph's ink starts, from the font's metrics alone: its pen position plus
        // its left side bearing, both unrounded.
        let font = FontRef::try_from_slice(FONT).unwrap();
        let size = 26.0;
        let scaled = font.as_scaled(size as f32);
        let text = "2121";
        let mut expected = Vec::new();
        let (mut pen, mut prev) = (0f32, None);
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                pen += scaled.kern(p, id);
            }
            prev = Some(id);
            expected.push(10.0 + pen + scaled.h_side_bearing(id));
            pen += scaled.h_advance(id);
        }
        let drawn = ink_runs(text, size, true);
        assert_eq!(drawn.len(), 4, "{drawn:?}");
        for (got, want) in drawn.iter().zip(&expected) {
            assert!(
                (*got as f32 - want).abs() <= 1.0,
                "ink at {drawn:?}, the font puts it at {expected:?}"
            );
        }
        // plotters' own path puts every "1" (left side bearing ~2.5 px at this size) early.
        let plain = ink_runs(text, size, false);
        assert!(
            plain
                .iter()
                .zip(&expected)
                .any(|(&got, want)| (got as f32 - want).abs() > 1.0),
            "plotters' text is placed right: GlyphText may no longer be needed ({plain:?})"
        );
    }
}
