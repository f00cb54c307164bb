//! `tcpmon top`: the on-call engineer's live terminal view of SYN-flood evidence and
//! connection health, drawn from a [`TopSnapshot`] per refresh, whether the snapshot
//! comes from an agent in this process or from `GET /api/v1/top` of a running one.

mod fetch;
mod format;
mod render;

use std::cell::Cell;
use std::io::{self, IsTerminal, Write};
use std::panic;
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratatui::Terminal;
use ratatui::backend::{CrosstermBackend, TestBackend};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};

use crate::syn::api::TopSnapshot;

pub use fetch::fetch;

/// Size of each frame in plain mode: wide enough for the per-port totals, tall enough
/// for a dozen ports and sources, and independent of whatever terminal (if any) is
/// on the other end of the pipe.
const PLAIN_WIDTH: u16 = 100;
const PLAIN_HEIGHT: u16 = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopOptions {
    pub refresh: Duration,
    /// Exit after this many refreshes (tests, demos); None runs until 'q'.
    pub frames: Option<u64>,
    /// Print each frame as plain text instead of the full-screen view.
    pub plain: bool,
}

impl Default for TopOptions {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(1),
            frames: None,
            plain: false,
        }
    }
}

/// Renders one snapshot into a ratatui frame; `status` is the one-line source or
/// state note shown at the top.
pub fn render(frame: &mut ratatui::Frame, snap: &TopSnapshot, status: &str) {
    render::draw(frame, snap, status, false);
}

/// Renders into `width` x `height` cells as plain text, trailing spaces trimmed.
pub fn render_to_string(snap: &TopSnapshot, status: &str, width: u16, height: u16) -> String {
    text_frame(snap, status, false, width, height)
}

fn text_frame(snap: &TopSnapshot, status: &str, alarm: bool, width: u16, height: u16) -> String {
    if width == 0 || height == 0 {
        return String::new();
    }
    let Ok(mut term) = Terminal::new(TestBackend::new(width, height));
    let Ok(_) = term.draw(|f| render::draw(f, snap, status, alarm));
    let buf = term.backend().buffer();
    let mut out = String::with_capacity(usize::from(width + 1) * usize::from(height));
    for y in 0..height {
        let mut line = String::new();
        for x in 0..width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        if y + 1 < height {
            out.push('\n');
        }
    }
    out
}

/// The refresh loop. A failing `source` shows its error in the status line over the
/// last good data and the loop goes on: an agent restarting must not kill the view.
pub fn run(
    source: &mut dyn FnMut() -> anyhow::Result<TopSnapshot>,
    status: &str,
    opts: &TopOptions,
) -> anyhow::Result<()> {
    if opts.plain || !io::stdout().is_terminal() {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        return match run_plain(&mut out, source, status, opts) {
            // `tcpmon top --plain | head` is a normal way to stop.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing to stdout"),
        };
    }
    run_tui(source, status, opts)
}

/// A source returns this when there is nothing more to show (the agent this view
/// runs on has stopped, on a signal): the view then ends instead of going stale.
#[derive(Debug, thiserror::Error)]
#[error("the monitor stopped")]
pub struct SourceGone;

/// What one refresh gives the screen: the snapshot to show (the last good one when
/// the source failed) and the status line.
struct View {
    snap: TopSnapshot,
    status: String,
    alarm: bool,
}

#[derive(Default)]
struct Feed {
    last: Option<(TopSnapshot, Instant)>,
}

impl Feed {
    fn refresh(
        &mut self,
        source: &mut dyn FnMut() -> anyhow::Result<TopSnapshot>,
        status: &str,
    ) -> Option<View> {
        Some(match source() {
            Ok(snap) => {
                self.last = Some((snap.clone(), Instant::now()));
                View {
                    snap,
                    status: status.to_string(),
                    alarm: false,
                }
            }
            Err(e) if e.is::<SourceGone>() => return None,
            Err(e) => {
                // How stale the screen is and what failed come first: at 80 columns
                // the tail of the line is cut off.
                let (snap, age) = match &self.last {
                    Some((snap, at)) => (
                        snap.clone(),
                        format!("data {}s old", at.elapsed().as_secs()),
                    ),
                    None => (TopSnapshot::default(), "no data yet".to_string()),
                };
                View {
                    snap,
                    status: format!("ERROR ({age}) {e:#} │ {status}"),
                    alarm: true,
                }
            }
        })
    }
}

fn run_plain(
    out: &mut dyn Write,
    source: &mut dyn FnMut() -> anyhow::Result<TopSnapshot>,
    status: &str,
    opts: &TopOptions,
) -> io::Result<()> {
    let mut feed = Feed::default();
    let mut done = 0u64;
    while opts.frames.is_none_or(|n| done < n) {
        let started = Instant::now();
        let Some(view) = feed.refresh(source, status) else {
            break;
        };
        if done > 0 {
            out.write_all(b"\x0c\n")?;
        }
        let text = text_frame(
            &view.snap,
            &view.status,
            view.alarm,
            PLAIN_WIDTH,
            PLAIN_HEIGHT,
        );
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        done += 1;
        if opts.frames.is_some_and(|n| done >= n) {
            break;
        }
        std::thread::sleep(opts.refresh.saturating_sub(started.elapsed()));
    }
    Ok(())
}

fn run_tui(
    source: &mut dyn FnMut() -> anyhow::Result<TopSnapshot>,
    status: &str,
    opts: &TopOptions,
) -> anyhow::Result<()> {
    let _guard = ScreenGuard::enter()?;
    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    term.clear()?;
    let mut feed = Feed::default();
    let mut done = 0u64;
    while opts.frames.is_none_or(|n| done < n) {
        let deadline = Instant::now() + opts.refresh;
        let Some(view) = feed.refresh(source, status) else {
            break;
        };
        done += 1;
        term.draw(|f| render::draw(f, &view.snap, &view.status, view.alarm))?;
        // Keys and resizes are handled between refreshes, so 'q' answers at once
        // rather than at the next tick. The last frame stays up for a full interval.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(key) if is_quit(&key) => return Ok(()),
                Event::Resize(..) => {
                    term.draw(|f| render::draw(f, &view.snap, &view.status, view.alarm))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn is_quit(key: &KeyEvent) -> bool {
    if key.kind == KeyEventKind::Release {
        return false;
    }
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
        // Raw mode turns Ctrl-C into a key press instead of SIGINT.
        KeyCode::Char('c' | 'C') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

thread_local! {
    /// Whether this thread put the terminal in raw mode on the alternate screen. Per
    /// thread, because the agent may run in this process: a panic caught in one of
    /// its worker threads must not tear the screen out from under a live view.
    static SCREEN_TAKEN: Cell<bool> = const { Cell::new(false) };
}

static PANIC_HOOK: Once = Once::new();

/// Raw mode and the alternate screen for as long as it lives. Dropping it (normal
/// exit, `?`, unwinding) restores the terminal; the panic hook restores it *before*
/// the panic message is printed, which would otherwise vanish with the alternate
/// screen.
struct ScreenGuard;

impl ScreenGuard {
    fn enter() -> anyhow::Result<Self> {
        PANIC_HOOK.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                restore_screen();
                previous(info);
            }));
        });
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        SCREEN_TAKEN.with(|t| t.set(true));
        // From here on, an early return drops the guard and undoes raw mode.
        let guard = ScreenGuard;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .context("entering the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for ScreenGuard {
    fn drop(&mut self) {
        restore_screen();
    }
}

fn restore_screen() {
    let taken = SCREEN_TAKEN.try_with(|t| t.replace(false)).unwrap_or(false);
    if taken {
        let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests;
