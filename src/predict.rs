//! Predicted completion time of an in-flight task from its progress rate (`docs/metrics.md`:
//! the per-task and aggregate gauges).
//!
//! `taskpulse_task_predicted_completion_timestamp_seconds` and `taskpulse_tasks_predicted_timeout`
//! both come from [`ProgressWindow::predict_completion`]: the time at which a straight line fitted
//! to the task's recent progress reaches 100 %.
//!
//! # Why a window, and why this one
//!
//! The last two reports alone give a jumpy estimate: workers report in uneven steps, so the rate
//! between two neighbouring reports swings widely. A least-squares fit over several samples
//! averages that out. But taskpulse targets under 1 KiB per tracked task, and a worker may report
//! ten times a second for hours, so the window is a fixed array of `CAPACITY` (10) samples (no
//! heap, 96 bytes in all) that must still cover a useful stretch of time. That is the job of the
//! downsampling policy:
//!
//! * **Minimum gap.** A new sample is only *kept* once the newest held sample is at least `gap`
//!   after the one before it. Until then the newest slot (the *head*) is overwritten, so the
//!   newest value is always there and a 10 Hz reporter does not flush the window in a second.
//! * **Thinning.** When the window is full and spans less than `TARGET_SPAN_MS` (5 minutes),
//!   every other sample is dropped (the oldest and the head are kept) and `gap` doubles. The span
//!   therefore doubles with each thinning, so a fast reporter reaches a useful span after a few
//!   seconds and the target span after a few minutes, at any reporting rate.
//! * **Sliding.** Once the window spans at least `TARGET_SPAN_MS`, the oldest sample is dropped
//!   instead. The span then stays about the same (between one and two target spans, as it grows
//!   by doublings), so the fit follows the task's *recent* rate, roughly the last 5 to 10 minutes,
//!   rather than averaging over its whole life.
//!
//! # The estimator
//!
//! Weighted least squares of progress over time, with weights 1, 2, …, n from the oldest sample to
//! the newest. The fit still averages noise over every sample, while the ramp lets it follow a
//! change of pace (a task speeding up) faster than a plain fit would. The prediction is where the
//! fitted line reaches 100, clamped to no earlier than the newest sample and no later than
//! `MAX_AHEAD_MS` (about 10 years) after it.
//!
//! There is no prediction when fewer than two samples are held, or when the fitted rate is not
//! positive (a stalled task, or one going backwards); a rate so small that 0 to 100 % would take
//! longer than `MAX_AHEAD_MS` counts as stalled.
//!
//! # Odd input
//!
//! * **Progress going backwards** by more than `RESET_DROP_PERCENT` (5) points (a worker
//!   restarting a phase, or a retry starting over) resets the window to the new sample: the old
//!   rate described work that is being redone, and mixing both would predict nonsense. Smaller
//!   dips are kept as noise; the fit absorbs them.
//! * **Time going backwards** (a clock step, an out-of-order report) also resets the window: the
//!   sample cannot be placed on the timeline the window holds. A report at the same time as the
//!   newest sample replaces that sample's progress.
//! * Progress that is NaN or infinite is ignored; finite progress is clamped to 0..=100. Time
//!   offsets are checked, so any `i64` timestamp is safe; a sample more than `u32::MAX` ms
//!   (about 49 days) after the oldest held one resets the window.
//!
//! * **A time that cannot be the report's** ([`sample_time`]): an `updateTime` before 2000, or
//!   further before the task was first seen than a window can span, is a counter, seconds read
//!   as milliseconds or a default, not when the progress was reached; a fit over such times
//!   predicts a completion in 1970. Such a sample is placed at taskpulse's time of arrival.
//!
//! This module has no notion of "now": a task that stops reporting keeps its last prediction.
//! Staleness is the stall detector's business (`taskpulse_tasks_stalled`).

/// Samples a window holds at most. With `u32` offsets and `f32` progress each sample takes
/// 8 bytes (the oldest sample's offset, always 0, is not stored), so 10 samples plus the base
/// timestamp and two counters is 88 bytes: a 96-byte malloc chunk, where 90 took 112.
const CAPACITY: usize = 10;

/// Minimum spacing between kept samples before any thinning. Reports closer together than this
/// only refresh the head.
const MIN_GAP_MS: u32 = 1_000;

/// Thinning stops once the window spans this long; afterwards it slides. Long enough to average
/// out uneven progress steps over ten samples, short enough to follow a change of pace within a
/// few minutes. (A 10-minute target took about twice as long to notice a task speeding up, with
/// no measurable gain against noise in the tests below.)
const TARGET_SPAN_MS: u32 = 5 * 60 * 1_000;

/// Cap on the number of thinnings, so `MIN_GAP_MS << level` cannot overflow. Never reached in
/// practice: the window spans far more than [`TARGET_SPAN_MS`] long before.
const MAX_LEVEL: u8 = 16;

/// A drop in progress by more than this many percentage points resets the window.
const RESET_DROP_PERCENT: f32 = 5.0;

/// The furthest ahead a prediction may lie: about 10 years, in ms.
const MAX_AHEAD_MS: f64 = 10.0 * 365.25 * 86_400_000.0;

/// Slowest rate (percentage points per ms) that still counts as progressing: 0 to 100 % in
/// [`MAX_AHEAD_MS`]. Anything slower is a stall, not a prediction.
const MIN_RATE_PER_MS: f64 = 100.0 / MAX_AHEAD_MS;

/// 2000-01-01T00:00:00Z in epoch ms. No clock of an engine or worker that reports progress
/// today is set before it: an earlier `updateTime` is not a time of day.
pub const EARLIEST_SAMPLE_MS: i64 = 946_684_800_000;

/// How far before its task was first seen an update's time may lie and still be taken as its
/// time: what one window can span (`u32::MAX` ms, about 49.7 days). A task taskpulse meets in
/// the middle of its run (an engine's store read at start) reports times from before it was
/// seen; a time earlier than this could not even share a window with a sample taken since.
const BEFORE_FIRST_SEEN_MS: i64 = u32::MAX as i64;

/// The time a progress sample is placed at: the update's engine time (`engine_ms`) where it can
/// be the update's, else `arrival_ms`, taskpulse's time of arrival. `first_seen_ms`: when
/// taskpulse first saw the task (its own clock).
pub fn sample_time(engine_ms: Option<i64>, first_seen_ms: i64, arrival_ms: i64) -> i64 {
    let earliest = EARLIEST_SAMPLE_MS.max(first_seen_ms.saturating_sub(BEFORE_FIRST_SEEN_MS));
    engine_ms.filter(|t| *t >= earliest).unwrap_or(arrival_ms)
}

// Thinning keeps the even indices plus the head, which assumes an even capacity of at least 4.
const _: () = assert!(CAPACITY % 2 == 0 && CAPACITY >= 4 && CAPACITY <= u8::MAX as usize);

/// Bounded window of (time, progress) samples of one task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressWindow {
    /// Epoch ms of the oldest held sample; offsets count from here.
    base_ms: i64,
    /// Time of each sample after the oldest, in ms after `base_ms`; strictly increasing over
    /// `..len - 1` (read through [`Self::offset`]: the oldest sample's is 0).
    later_ms: [u32; CAPACITY - 1],
    /// Progress of each sample, 0..=100.
    progress: [f32; CAPACITY],
    /// Samples held.
    len: u8,
    /// Thinnings so far; the minimum gap between kept samples is `MIN_GAP_MS << level`.
    level: u8,
}

impl ProgressWindow {
    /// Records that the task's progress is `progress_percent` at `at_ms` (epoch ms). Called on
    /// every accepted progress change; cheap (no allocation after the first).
    pub fn record(&mut self, at_ms: i64, progress_percent: f32) {
        if !progress_percent.is_finite() {
            return;
        }
        let progress = progress_percent.clamp(0.0, 100.0);
        if self.is_empty() {
            self.restart(at_ms, progress);
            return;
        }
        let head = self.len() - 1;
        let offset = match self.offset_of(at_ms) {
            Some(offset) if offset >= self.offset(head) => offset,
            // Before the newest sample, or too far after the oldest one.
            _ => {
                self.restart(at_ms, progress);
                return;
            }
        };
        if self.progress[head] - progress > RESET_DROP_PERCENT {
            self.restart(at_ms, progress);
            return;
        }
        if offset == self.offset(head) {
            self.progress[head] = progress;
            return;
        }
        if self.head_is_settled() && self.len() == CAPACITY {
            self.make_room();
        }
        // `make_room` may have moved the base (sliding only moves it forward, to a sample that is
        // not after `at_ms`), so the offset is computed again.
        let Some(offset) = self.offset_of(at_ms) else {
            self.restart(at_ms, progress);
            return;
        };
        // A settled head stays; otherwise the new sample takes its place.
        if self.head_is_settled() {
            self.len += 1;
        }
        let slot = self.len() - 1;
        self.set_offset(slot, offset);
        self.progress[slot] = progress;
    }

    /// Estimated completion time (epoch ms) from the progress rate, when at least two samples
    /// show a positive rate; None otherwise.
    pub fn predict_completion(&self) -> Option<i64> {
        let n = self.len();
        if n < 2 {
            return None;
        }
        // Weights 1, 2, ..., n from the oldest sample to the newest.
        let samples = || {
            (0..n)
                .zip(&self.progress[..n])
                .zip(1u8..)
                .map(|((i, &p), w)| (f64::from(self.offset(i)), f64::from(p), f64::from(w)))
        };
        let (mut sum_w, mut sum_wt, mut sum_wp) = (0.0, 0.0, 0.0);
        for (t, p, w) in samples() {
            sum_w += w;
            sum_wt += w * t;
            sum_wp += w * p;
        }
        // sum_w >= 3 here: n >= 2.
        let (mean_t, mean_p) = (sum_wt / sum_w, sum_wp / sum_w);
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for (t, p, w) in samples() {
            let dt = t - mean_t;
            sxx += w * dt * dt;
            sxy += w * dt * (p - mean_p);
        }
        if sxx <= 0.0 {
            return None;
        }
        let rate = sxy / sxx;
        if !rate.is_finite() || rate <= MIN_RATE_PER_MS {
            return None;
        }
        let last = f64::from(self.offset(n - 1));
        let reaches_100 = mean_t + (100.0 - mean_p) / rate;
        // `max`/`min` rather than `clamp`: they cannot panic, and they drop a NaN.
        let at = reaches_100.max(last).min(last + MAX_AHEAD_MS);
        // `at` lies in 0 ..= u32::MAX + MAX_AHEAD_MS, far inside i64.
        Some(self.base_ms.saturating_add(at.round() as i64))
    }

    /// The samples held, oldest first, as (epoch ms, percent): the task view's progress chart.
    pub fn samples(&self) -> Vec<(i64, f32)> {
        (0..self.len())
            .map(|i| {
                let at = self.base_ms.saturating_add(i64::from(self.offset(i)));
                (at, self.progress[i])
            })
            .collect()
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// No samples held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every sample and starts over from this one.
    fn restart(&mut self, at_ms: i64, progress: f32) {
        *self = Self {
            base_ms: at_ms,
            len: 1,
            ..Self::default()
        };
        self.progress[0] = progress;
    }

    /// Time of sample `i` in ms after the base: 0 for the oldest, which the base is the time of.
    fn offset(&self, i: usize) -> u32 {
        i.checked_sub(1).map_or(0, |later| self.later_ms[later])
    }

    /// Sets the time of sample `i`; the oldest's stays 0 (the base moves instead).
    fn set_offset(&mut self, i: usize, offset_ms: u32) {
        match i.checked_sub(1) {
            Some(later) => self.later_ms[later] = offset_ms,
            None => debug_assert_eq!(offset_ms, 0, "the oldest sample is the base"),
        }
    }

    /// `at_ms` as an offset from the base, when it is not before the base and fits.
    fn offset_of(&self, at_ms: i64) -> Option<u32> {
        u32::try_from(at_ms.checked_sub(self.base_ms)?).ok()
    }

    /// Minimum spacing between kept samples at the current thinning level.
    fn gap_ms(&self) -> u32 {
        MIN_GAP_MS.saturating_mul(1 << self.level.min(MAX_LEVEL))
    }

    /// Whether the head is far enough after the sample before it to be kept: then the next report
    /// gets a new slot, otherwise it overwrites the head.
    fn head_is_settled(&self) -> bool {
        let n = self.len();
        n < 2 || self.offset(n - 1).saturating_sub(self.offset(n - 2)) >= self.gap_ms()
    }

    /// Frees at least one slot of a full window: thins it while it spans less than
    /// [`TARGET_SPAN_MS`], slides it afterwards.
    fn make_room(&mut self) {
        let n = self.len();
        let span = self.offset(n - 1);
        if span < TARGET_SPAN_MS && self.level < MAX_LEVEL {
            // Keep indices 0, 2, 4, ..., n - 2 (twice the spacing, same start) and the head.
            let kept = n / 2;
            for i in 1..kept {
                self.set_offset(i, self.offset(2 * i));
                self.progress[i] = self.progress[2 * i];
            }
            self.set_offset(kept, self.offset(n - 1));
            self.progress[kept] = self.progress[n - 1];
            self.len = (kept + 1) as u8;
            self.level += 1;
        } else {
            // Drop the oldest sample and count offsets from the new oldest one.
            let shift = self.offset(1);
            for i in 1..n {
                self.set_offset(i - 1, self.offset(i) - shift);
                self.progress[i - 1] = self.progress[i];
            }
            self.base_ms = self.base_ms.saturating_add(i64::from(shift));
            self.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary epoch-ms start, so the tests exercise real-sized timestamps.
    const T0: i64 = 1_700_000_000_000;

    /// Feeds `progress(t)` sampled every `step_ms` from `from_ms` up to and including `to_ms`
    /// (ms after `T0`).
    fn feed(
        w: &mut ProgressWindow,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
        mut progress: impl FnMut(i64) -> f32,
    ) {
        let mut t = from_ms;
        while t <= to_ms {
            w.record(T0 + t, progress(t));
            t += step_ms;
        }
    }

    /// Predicted completion in seconds after `T0`.
    fn predicted_s(w: &ProgressWindow) -> Option<f64> {
        w.predict_completion().map(|at| (at - T0) as f64 / 1000.0)
    }

    /// Checks the invariants every window must keep, whatever it was fed.
    fn assert_sane(w: &ProgressWindow) {
        assert!(w.len() <= CAPACITY);
        let n = w.len();
        assert!((1..n).all(|i| w.offset(i - 1) < w.offset(i)), "{w:?}");
        assert!(
            w.progress[..n].iter().all(|p| (0.0..=100.0).contains(p)),
            "{w:?}"
        );
        if let Some(at) = w.predict_completion() {
            let last = w.base_ms.saturating_add(i64::from(w.offset(n - 1)));
            assert!(at >= last, "{at} before the newest sample {last}: {w:?}");
            assert!(
                (at - last) as f64 <= MAX_AHEAD_MS + 1.0,
                "{at} too far ahead: {w:?}"
            );
        }
    }

    /// Tiny deterministic LCG (Numerical Recipes constants): uniform in [-1, 1).
    struct Lcg(u32);
    impl Lcg {
        fn next_unit(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        }
    }

    #[test]
    fn window_is_small() {
        // 88 bytes and glibc's 8-byte chunk header fill a 96-byte chunk; 89 would take 112.
        assert!(std::mem::size_of::<ProgressWindow>() <= 88);
    }

    #[test]
    fn empty_and_single_sample_predict_nothing() {
        let mut w = ProgressWindow::default();
        assert!(w.is_empty());
        assert_eq!(w.predict_completion(), None);
        w.record(T0, 40.0);
        assert_eq!(w.len(), 1);
        assert_eq!(w.predict_completion(), None);
        // Same time again: replaces the progress, still one sample.
        w.record(T0, 45.0);
        assert_eq!(w.len(), 1);
        assert_eq!(w.predict_completion(), None);
    }

    #[test]
    fn steady_progress_predicts_the_true_finish() {
        // 0.1 %/s: finishes at 1000 s. Reports every 2 s.
        let mut w = ProgressWindow::default();
        for end in [10_000, 100_000, 400_000, 900_000] {
            let from = if w.is_empty() { 0 } else { end / 2 };
            feed(&mut w, from, end, 2_000, |t| t as f32 / 10_000.0);
            let got = predicted_s(&w).unwrap();
            assert!((got - 1000.0).abs() < 0.5, "at {end} ms: {got}");
            assert_sane(&w);
        }
    }

    #[test]
    fn a_time_that_cannot_be_the_reports_is_replaced_by_the_arrival() {
        let first_seen = T0;
        let arrival = T0 + 5_000;
        // the engine's time, even from before the task was seen (met in the middle of its run)
        assert_eq!(sample_time(Some(T0 + 10), first_seen, arrival), T0 + 10);
        assert_eq!(
            sample_time(Some(T0 - 86_400_000), first_seen, arrival),
            T0 - 86_400_000
        );
        // none, a few ms after 1970, seconds read as ms, before 2000
        for nonsense in [
            None,
            Some(0),
            Some(5),
            Some(-1),
            Some(1_700_000_000),
            Some(EARLIEST_SAMPLE_MS - 1),
        ] {
            assert_eq!(
                sample_time(nonsense, first_seen, arrival),
                arrival,
                "{nonsense:?}"
            );
        }
        // after 2000, but further before the task was first seen than a window spans
        let long_before = first_seen - i64::from(u32::MAX) - 1;
        assert_eq!(sample_time(Some(long_before), first_seen, arrival), arrival);
        assert_eq!(
            sample_time(Some(long_before + 1), first_seen, arrival),
            long_before + 1
        );
        // no overflow at the ends
        assert_eq!(sample_time(Some(i64::MIN), i64::MIN, arrival), arrival);
        assert_eq!(sample_time(Some(i64::MAX), i64::MAX, arrival), i64::MAX);
    }

    #[test]
    fn samples_come_back_oldest_first_in_epoch_ms() {
        let mut w = ProgressWindow::default();
        w.record(1_000_000, 10.0);
        w.record(1_000_000 + 60_000, 20.0);
        w.record(1_000_000 + 120_000, 35.0);
        let s = w.samples();
        assert_eq!(s.len(), w.len());
        assert_eq!(s.first(), Some(&(1_000_000, 10.0)));
        assert_eq!(s.last(), Some(&(1_120_000, 35.0)));
        assert!(s.windows(2).all(|p| p[0].0 < p[1].0));
    }

    #[test]
    fn two_samples_are_enough() {
        let mut w = ProgressWindow::default();
        w.record(T0, 0.0);
        w.record(T0 + 10_000, 50.0);
        assert_eq!(w.predict_completion(), Some(T0 + 20_000));
    }

    #[test]
    fn stalled_progress_predicts_nothing() {
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 3_600_000, 500, |_| 37.3);
        assert!(w.len() >= 2);
        assert_eq!(w.predict_completion(), None);
        assert_sane(&w);
    }

    #[test]
    fn rise_then_stall_stops_predicting_once_the_rise_left_the_window() {
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 600_000, 1_000, |t| t as f32 / 10_000.0); // to 60 %
        let before = w.predict_completion().unwrap();
        feed(&mut w, 601_000, 900_000, 1_000, |_| 60.0);
        // Still some rise in the window: the prediction only moves later.
        let during = w.predict_completion().unwrap();
        assert!(during > before);
        feed(&mut w, 901_000, 4_000_000, 1_000, |_| 60.0);
        assert_eq!(w.predict_completion(), None);
    }

    #[test]
    fn accelerating_progress_moves_the_prediction_earlier() {
        // progress = 100 (t / 1000 s)^2: true finish 1000 s. A straight-line fit of a convex curve
        // lags (predicts late), but less and less as the end nears.
        let mut w = ProgressWindow::default();
        let curve = |t: i64| {
            let x = t as f32 / 1_000_000.0;
            100.0 * x * x
        };
        let mut previous = f64::INFINITY;
        let mut t = 0;
        for check_s in [200, 400, 600, 800, 900, 950] {
            feed(&mut w, t, check_s * 1000, 1_000, curve);
            t = check_s * 1000 + 1000;
            let got = predicted_s(&w).unwrap();
            assert!(
                got < previous,
                "at {check_s} s: {got} not earlier than {previous}"
            );
            assert!(
                got >= 999.0,
                "at {check_s} s: {got} earlier than the true finish"
            );
            previous = got;
        }
        // At 95 % done the estimate is within 5 % of the truth.
        assert!(previous < 1050.0, "{previous}");
    }

    #[test]
    fn speeding_up_is_picked_up_within_minutes() {
        // 0.05 %/s for 400 s (20 %), then 0.2 %/s: true finish 400 + 80 / 0.2 = 800 s.
        let mut w = ProgressWindow::default();
        let p = |t: i64| {
            if t <= 400_000 {
                t as f32 / 20_000.0
            } else {
                20.0 + (t - 400_000) as f32 / 5_000.0
            }
        };
        feed(&mut w, 0, 400_000, 1_000, p);
        let slow = predicted_s(&w).unwrap();
        assert!((slow - 2000.0).abs() < 1.0, "{slow}");
        feed(&mut w, 401_000, 600_000, 1_000, p);
        let fast = predicted_s(&w).unwrap();
        // 200 s after the change: most of the way from 2000 s to 800 s.
        assert!(fast < 1200.0, "{fast}");
        feed(&mut w, 601_000, 750_000, 1_000, p);
        let fast = predicted_s(&w).unwrap();
        // 350 s after the change (the window spans about 10 minutes): within 10 %.
        assert!((800.0..880.0).contains(&fast), "{fast}");
    }

    #[test]
    fn noisy_progress_stays_near_the_truth() {
        // 0.1 %/s (finish at 1000 s), reports every second, each off by up to ±2 points: within
        // 10 % of the truth from 30 % done, within 5 % from 50 % done.
        for seed in 1..=50 {
            let mut noise = Lcg(seed);
            let mut w = ProgressWindow::default();
            let mut t = 0;
            for (check_s, tolerance) in [(300, 100.0), (400, 100.0), (500, 50.0), (900, 50.0)] {
                feed(&mut w, t, check_s * 1000, 1_000, |t| {
                    (t as f32 / 10_000.0 + 2.0 * noise.next_unit()).max(0.0)
                });
                t = check_s * 1000 + 1000;
                let got = predicted_s(&w).unwrap();
                assert!(
                    (got - 1000.0).abs() < tolerance,
                    "seed {seed} at {check_s} s: {got}"
                );
                assert_sane(&w);
            }
        }
    }

    #[test]
    fn a_large_drop_resets_the_window() {
        // 0.1 %/s to 60 %, then the worker restarts the phase at 0 % and runs at 0.2 %/s.
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 600_000, 1_000, |t| t as f32 / 10_000.0);
        w.record(T0 + 601_000, 0.0);
        assert_eq!(w.len(), 1);
        assert_eq!(w.predict_completion(), None);
        feed(&mut w, 602_000, 700_000, 1_000, |t| {
            (t - 601_000) as f32 / 5_000.0
        });
        // Only the new phase counts: 601 s + 100 / 0.2 = 1101 s.
        let got = predicted_s(&w).unwrap();
        assert!((got - 1101.0).abs() < 0.5, "{got}");
        assert_sane(&w);
    }

    #[test]
    fn a_small_dip_is_kept_as_noise() {
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 300_000, 1_000, |t| t as f32 / 10_000.0); // to 30 %
        w.record(T0 + 301_000, 27.0);
        assert!(w.len() > 1, "window reset by a 3-point dip");
        // The newest sample weighs most, so the dip shows at once, but only moderately.
        let got = predicted_s(&w).unwrap();
        assert!((got - 1000.0).abs() < 150.0, "{got}");
        // And fades as the task goes on.
        feed(&mut w, 302_000, 360_000, 1_000, |t| t as f32 / 10_000.0);
        let got = predicted_s(&w).unwrap();
        assert!((got - 1000.0).abs() < 50.0, "{got}");
    }

    #[test]
    fn steadily_falling_progress_predicts_nothing() {
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 600_000, 1_000, |t| 90.0 - t as f32 / 10_000.0);
        assert!(w.len() >= 2);
        assert_eq!(w.predict_completion(), None);
    }

    #[test]
    fn time_going_backwards_resets_the_window() {
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 100_000, 1_000, |t| t as f32 / 10_000.0);
        w.record(T0 + 50_000, 10.0);
        assert_eq!(w.len(), 1);
        assert_eq!(w.predict_completion(), None);
        w.record(T0 + 60_000, 11.0);
        assert_eq!(w.predict_completion(), Some(T0 + 950_000));
    }

    #[test]
    fn ten_hertz_for_an_hour_stays_bounded_and_accurate() {
        assert!(std::mem::size_of::<ProgressWindow>() <= 96);
        // 0 to 100 % over two hours, reported every 100 ms for the first hour.
        let mut w = ProgressWindow::default();
        let mut max_len = 0;
        let mut t = 0;
        while t <= 3_600_000 {
            w.record(T0 + t, t as f32 / 72_000.0);
            max_len = max_len.max(w.len());
            t += 100;
        }
        assert!(max_len <= CAPACITY);
        assert_sane(&w);
        // The window still covers a useful span, and reaches the newest report.
        let n = w.len();
        let span = w.offset(n - 1) - w.offset(0);
        assert!(span >= TARGET_SPAN_MS, "{span}");
        assert!(span <= 4 * TARGET_SPAN_MS, "{span}");
        assert_eq!(w.base_ms + i64::from(w.offset(n - 1)), T0 + 3_600_000);
        let got = predicted_s(&w).unwrap();
        assert!((got - 7200.0).abs() < 1.0, "{got}");
    }

    #[test]
    fn slow_task_is_predicted_after_its_deadline() {
        // The case: 0 % at t = 0, 10 % after 100 s, 300 s timeout.
        let deadline = T0 + 300_000;
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 100_000, 5_000, |t| t as f32 / 10_000.0);
        let at = w.predict_completion().unwrap();
        assert!(at > deadline);
        assert!((at - (T0 + 1_000_000)).abs() < 1_000, "{at}");
    }

    #[test]
    fn fast_task_is_predicted_before_its_deadline() {
        // 0 % at t = 0, 90 % after 100 s, 300 s timeout: done at about 111 s.
        let deadline = T0 + 300_000;
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 100_000, 5_000, |t| t as f32 * 0.9 / 1_000.0);
        let at = w.predict_completion().unwrap();
        assert!(at < deadline);
        assert!((at - (T0 + 111_111)).abs() < 1_000, "{at}");
    }

    #[test]
    fn finished_progress_predicts_the_newest_sample() {
        let mut w = ProgressWindow::default();
        feed(&mut w, 0, 200_000, 1_000, |t| {
            (t as f32 / 1_000.0).min(100.0)
        });
        // The fitted line crossed 100 % before the newest sample: clamped to it.
        assert_eq!(w.predict_completion(), Some(T0 + 200_000));
    }

    #[test]
    fn very_slow_progress_is_clamped_or_treated_as_stalled() {
        let mut w = ProgressWindow::default();
        // 1 point per 10 days: done after 1000 days, inside the 10-year horizon.
        w.record(0, 0.0);
        w.record(864_000_000, 1.0);
        assert_eq!(w.predict_completion(), Some(86_400_000_000));
        // Slower than 100 % in 10 years: stalled.
        let mut w = ProgressWindow::default();
        w.record(0, 0.0);
        w.record(4_000_000_000, 0.001);
        assert_eq!(w.predict_completion(), None);
    }

    #[test]
    fn junk_input_never_panics() {
        let times = [
            i64::MIN,
            i64::MIN + 1,
            -1_000,
            -1,
            0,
            1,
            T0,
            T0 + 1,
            T0 + i64::from(u32::MAX),
            T0 + i64::from(u32::MAX) + 1,
            i64::MAX - 1,
            i64::MAX,
        ];
        let progress = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1e30,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            50.0,
            100.0,
            1e30,
            f32::MAX,
        ];
        let mut w = ProgressWindow::default();
        for &t in &times {
            for &p in &progress {
                w.record(t, p);
                assert_sane(&w);
            }
        }
        for &t in times.iter().rev() {
            for &p in &progress {
                w.record(t, p);
                assert_sane(&w);
            }
        }
        // Near the top of the i64 range, a prediction saturates instead of overflowing.
        let mut w = ProgressWindow::default();
        w.record(i64::MAX - 2_000, 0.0);
        w.record(i64::MAX - 1_000, 0.001);
        assert_sane(&w);
        assert_eq!(w.predict_completion(), Some(i64::MAX));
    }

    #[test]
    fn random_sequences_keep_the_invariants() {
        let mut rng = Lcg(7);
        for _ in 0..200 {
            let mut w = ProgressWindow::default();
            let mut t = T0;
            let mut p = 0.0f32;
            for _ in 0..2_000 {
                let r = rng.next_unit();
                // Mostly forward in small steps; sometimes big jumps, equal times or going back.
                t += match (r * 10.0) as i32 {
                    -9 => -50_000,
                    -8 => 0,
                    9 => 10_000_000_000,
                    _ => ((r + 1.0) * 3_000.0) as i64,
                };
                p = match (rng.next_unit() * 20.0) as i32 {
                    -19 => 0.0,
                    19 => f32::NAN,
                    d => p + d as f32 * 0.1,
                };
                w.record(t, p);
                assert_sane(&w);
            }
        }
    }
}
