//! The screen: what an SRE needs during a SYN flood, readable at 80x24 over SSH and
//! using the extra rows and columns of a bigger terminal for more ports, more source
//! prefixes, longer bars and the per-port totals.

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

use super::format as fmt;
use crate::syn::api::{CostSummary, PortSyn, SourcePrefix, TopSnapshot};

/// Rows that are there whatever the data: status bar, two header lines, the ports
/// title and column header, the sources title, the connections title and its three
/// lines, the footer.
const FIXED_ROWS: u16 = 11;
const CONN_LINES: u16 = 3;
/// From this width on, the port table also shows the SYN and ACK totals.
const WIDE: u16 = 100;

/// `alarm` paints the status bar red: the data shown is stale because the last
/// fetch failed.
pub fn draw(frame: &mut Frame, snap: &TopSnapshot, status: &str, alarm: bool) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let ports = sorted_ports(&snap.syn.ports);
    let sources = sorted_sources(&snap.syn.top_sources);
    let (port_rows, source_rows) = split_rows(
        area.height.saturating_sub(FIXED_ROWS),
        ports.len().max(1),
        sources.len().max(1),
    );

    // Spare rows first go to blank lines between the sections, which makes the
    // screen easier to take in at a glance; the rest pools above the footer.
    let spare = area
        .height
        .saturating_sub(FIXED_ROWS + port_rows + source_rows);
    let gap = u16::from(spare >= 3);
    let [
        status_a,
        header_a,
        _,
        ports_a,
        _,
        sources_a,
        _,
        conn_a,
        _,
        footer_a,
    ] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(gap),
        Constraint::Length(2 + port_rows),
        Constraint::Length(gap),
        Constraint::Length(1 + source_rows),
        Constraint::Length(gap),
        Constraint::Length(1 + CONN_LINES),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);

    draw_status(frame, status_a, status, alarm);
    draw_header(frame, header_a, snap);
    draw_ports(frame, ports_a, &ports, now_ms(snap));
    draw_sources(frame, sources_a, &sources, snap.syn.window_secs);
    draw_connections(frame, conn_a, snap);
    draw_footer(frame, footer_a, snap);
}

/// Splits the rows left for the two lists. Both get all they want when they fit;
/// otherwise neither is squeezed below half unless the other needs less than its half.
fn split_rows(avail: u16, want_ports: usize, want_sources: usize) -> (u16, u16) {
    let wp = u16::try_from(want_ports).unwrap_or(u16::MAX);
    let ws = u16::try_from(want_sources).unwrap_or(u16::MAX);
    if wp.saturating_add(ws) <= avail {
        return (wp, ws);
    }
    let ports_half = avail.div_ceil(2);
    if wp <= ports_half {
        (wp, avail - wp)
    } else if ws <= avail - ports_half {
        (avail - ws, ws)
    } else {
        (ports_half, avail - ports_half)
    }
}

/// The snapshot's own clock, so a stale snapshot's flood durations stay consistent
/// with it (and tests are deterministic); wall time only when it has none.
fn now_ms(snap: &TopSnapshot) -> u64 {
    if snap.syn.unix_ms != 0 {
        return snap.syn.unix_ms;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Flooded ports first (they are why the screen is open), then the busiest.
fn sorted_ports(ports: &[PortSyn]) -> Vec<&PortSyn> {
    let mut v: Vec<&PortSyn> = ports.iter().collect();
    v.sort_by(|a, b| {
        b.flood
            .cmp(&a.flood)
            .then_with(|| b.syn_rate.total_cmp(&a.syn_rate))
            .then_with(|| port_order(&a.port, &b.port))
    });
    v
}

/// Numeric ports in numeric order, "other" after them.
fn port_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u32>(), b.parse::<u32>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The API promises most first; a stable sort keeps that promise true on screen even
/// from an agent that does not.
fn sorted_sources(sources: &[SourcePrefix]) -> Vec<&SourcePrefix> {
    let mut v: Vec<&SourcePrefix> = sources.iter().collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.syns));
    v
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn flood_style() -> Style {
    Style::new()
        .fg(Color::White)
        .bg(Color::Red)
        .add_modifier(Modifier::BOLD)
}

/// A "label value" pair followed by a gap, the unit of every summary line.
fn kv<'a>(spans: &mut Vec<Span<'a>>, label: &'a str, value: String, style: Style) {
    if !spans.is_empty() {
        spans.push(Span::raw("   "));
    }
    spans.push(Span::raw(label));
    spans.push(Span::raw(" "));
    spans.push(Span::styled(value, style));
}

fn section(title: Vec<Span<'static>>) -> Block<'static> {
    let mut spans = vec![Span::raw(" ")];
    spans.extend(title);
    spans.push(Span::raw(" "));
    Block::new()
        .borders(Borders::TOP)
        .border_style(dim())
        .title(Line::from(spans).style(bold()))
}

fn draw_status(frame: &mut Frame, area: Rect, status: &str, alarm: bool) {
    let style = if alarm {
        flood_style()
    } else {
        Style::new().add_modifier(Modifier::REVERSED)
    };
    let text = Line::from(vec![
        Span::styled(" tcpmon top ", style.add_modifier(Modifier::BOLD)),
        Span::styled(format!("│ {status}"), style),
    ]);
    frame.render_widget(Paragraph::new(text).style(style), area);
}

fn draw_header(frame: &mut Frame, area: Rect, snap: &TopSnapshot) {
    let syn = &snap.syn;
    let mut l1 = Vec::new();
    kv(
        &mut l1,
        "SYN",
        format!("{}/s", fmt::rate(syn.syn_rate)),
        bold(),
    );
    kv(
        &mut l1,
        "SYN-ACK",
        format!("{}/s", fmt::rate(syn.synack_rate)),
        bold(),
    );
    let sampling_style = if syn.sample_ratio > 0.0 && syn.sample_ratio < 1.0 {
        bold().fg(Color::Yellow)
    } else {
        bold()
    };
    kv(
        &mut l1,
        "sampling",
        fmt::sampling(syn.sample_ratio),
        sampling_style,
    );
    kv(
        &mut l1,
        "sources",
        format!(
            "~{} in {}s",
            fmt::count(syn.sources_estimate),
            syn.window_secs
        ),
        bold(),
    );

    // "sampled out" rather than "sampled": these are the events the kernel skipped,
    // not the ones it sent.
    let lost_style = if syn.events_lost_total > 0 {
        flood_style()
    } else {
        bold()
    };
    let table = &syn.prefix_table;
    let mut l2 = vec![
        Span::raw("events: sampled out "),
        Span::styled(fmt::count(syn.events_sampled_total), bold()),
        Span::raw(", lost "),
        Span::styled(fmt::count(syn.events_lost_total), lost_style),
        Span::raw("   prefix table "),
        Span::styled(
            format!(
                "{}/{}",
                fmt::count(table.entries),
                fmt::count(table.capacity)
            ),
            bold(),
        ),
    ];
    // Evictions cost the top-K list accuracy (never the totals): worth a glance.
    if table.evictions_total > 0 {
        l2.push(Span::styled(
            format!(", {} evicted", fmt::count(table.evictions_total)),
            Style::new().fg(Color::Yellow),
        ));
    }
    // How late a sampled-out handshake may complete and still be seen.
    if let Some(t) = snap.embryos.turnover_secs {
        let short = t < crate::embryos::SHORT_TURNOVER.as_secs_f64();
        l2.push(Span::raw("   embryos live "));
        l2.push(Span::styled(
            format!("{t:.2} s"),
            if short { flood_style() } else { bold() },
        ));
    }
    frame.render_widget(Paragraph::new(vec![Line::from(l1), Line::from(l2)]), area);
}

fn draw_ports(frame: &mut Frame, area: Rect, ports: &[&PortSyn], now_ms: u64) {
    let flooded = ports.iter().filter(|p| p.flood).count();
    let inner_rows = usize::from(area.height.saturating_sub(2));
    let mut title = vec![Span::raw("Ports")];
    if flooded > 0 {
        title.push(Span::raw(" "));
        title.push(Span::styled(
            format!(" FLOOD on {flooded} of {} ", ports.len()),
            flood_style(),
        ));
    }
    if ports.len() > inner_rows {
        title.push(Span::raw(format!(
            " · showing {inner_rows} of {}",
            ports.len()
        )));
    }
    let block = section(title);
    if ports.is_empty() {
        let p = Paragraph::new(Span::styled("no SYNs seen yet", dim())).block(block);
        frame.render_widget(p, area);
        return;
    }

    let wide = area.width >= WIDE;
    let mut headers = vec![
        "PORT",
        "STATE",
        "SYN/s",
        "SYN-ACK/s",
        "ACK/s",
        "UNACKED",
        "SOURCES",
        "HALF-OPEN",
    ];
    let mut widths = vec![
        Constraint::Length(6),
        Constraint::Length(13),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    if wide {
        headers.extend(["SYNS", "ACKS"]);
        widths.extend([Constraint::Length(9), Constraint::Length(9)]);
    }
    // Numbers are right-aligned, and so are their headings, so digits line up.
    let header = Row::new(
        headers
            .iter()
            .enumerate()
            .map(|(i, h)| right_if(i >= 2, (*h).to_string())),
    )
    .style(bold().add_modifier(Modifier::UNDERLINED));
    let rows = ports.iter().map(|p| port_row(p, now_ms, wide));
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(block);
    frame.render_widget(table, area);
}

fn right_if(right: bool, s: String) -> Cell<'static> {
    let line = Line::from(s);
    Cell::from(if right {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

fn port_row(p: &PortSyn, now_ms: u64, wide: bool) -> Row<'static> {
    let state = if p.flood {
        let text = match p.flood_since_unix_ms {
            Some(since) => format!(
                "FLOOD {}",
                fmt::duration_secs(now_ms.saturating_sub(since) / 1000)
            ),
            None => "FLOOD".to_string(),
        };
        Cell::from(Span::styled(text, flood_style()))
    } else {
        Cell::from(Span::styled("ok", Style::new().fg(Color::Green)))
    };
    let port_style = if p.flood {
        bold().fg(Color::Red)
    } else {
        bold()
    };
    let unacked = right_if(true, fmt::percent(p.unacked_share));
    let unacked = if p.unacked_share >= 0.5 {
        unacked.style(Style::new().fg(Color::Yellow))
    } else {
        unacked
    };
    let mut cells = vec![
        Cell::from(Span::styled(p.port.clone(), port_style)),
        state,
        right_if(true, fmt::rate(p.syn_rate)),
        right_if(true, fmt::rate(p.synack_rate)),
        right_if(true, fmt::rate(p.ack_rate)),
        unacked,
        right_if(true, fmt::count(p.sources_estimate)),
        right_if(true, fmt::count(p.half_open)),
    ];
    if wide {
        cells.push(right_if(true, fmt::count(p.syn_total)));
        cells.push(right_if(true, fmt::count(p.ack_total)));
    }
    Row::new(cells)
}

fn draw_sources(frame: &mut Frame, area: Rect, sources: &[&SourcePrefix], window_secs: u64) {
    let inner_rows = usize::from(area.height.saturating_sub(1));
    let mut title = vec![Span::raw(format!("Top sources ({window_secs}s window)"))];
    if sources.len() > inner_rows {
        title.push(Span::raw(format!(
            " · showing {inner_rows} of {}",
            sources.len()
        )));
    }
    let block = section(title);
    if sources.is_empty() {
        let p = Paragraph::new(Span::styled("no SYN sources in the window", dim())).block(block);
        frame.render_widget(p, area);
        return;
    }
    // IPv6 /64 prefixes run to 24 characters; past 43 it is not a prefix we made.
    let prefix_w = sources
        .iter()
        .map(|s| s.prefix.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 43) as u16;
    const SYNS_W: u16 = 7;
    const SHARE_W: u16 = 6;
    let bar_w = area
        .width
        .saturating_sub(prefix_w + SYNS_W + SHARE_W + 3)
        .min(60);
    let rows: Vec<Row> = sources
        .iter()
        .map(|s| {
            Row::new([
                Cell::from(s.prefix.clone()),
                right_if(true, fmt::count(s.syns)),
                right_if(true, fmt::percent(s.share)),
                Cell::from(Span::styled(
                    bar(s.share, bar_w),
                    Style::new().fg(Color::Red),
                )),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(prefix_w),
            Constraint::Length(SYNS_W),
            Constraint::Length(SHARE_W),
            Constraint::Length(bar_w),
        ],
    )
    .column_spacing(1)
    .block(block);
    frame.render_widget(table, area);
}

/// A horizontal bar of the share, to eighths of a cell so small shares still show.
fn bar(share: f64, width: u16) -> String {
    const PARTIAL: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if !share.is_finite() || width == 0 {
        return String::new();
    }
    let eighths = (share.clamp(0.0, 1.0) * f64::from(width) * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s.push_str(PARTIAL[eighths % 8]);
    s
}

fn draw_connections(frame: &mut Frame, area: Rect, snap: &TopSnapshot) {
    let c = &snap.connections;
    let mut l1 = Vec::new();
    kv(
        &mut l1,
        "handshakes",
        format!(
            "{} total, {}/s",
            fmt::count(c.opened_total),
            fmt::rate(c.opened_rate)
        ),
        bold(),
    );
    l1.push(Span::raw("   latency"));
    for (label, v) in [
        ("p50", c.handshake_p50_us),
        ("p90", c.handshake_p90_us),
        ("p99", c.handshake_p99_us),
    ] {
        l1.push(Span::raw(format!(" {label} ")));
        l1.push(Span::styled(fmt::latency_us(v), bold()));
    }

    let mut l2 = Vec::new();
    let warn = |n: u64| {
        if n > 0 {
            bold().fg(Color::Yellow)
        } else {
            bold()
        }
    };
    kv(
        &mut l2,
        "failures",
        fmt::count(c.failures_total),
        warn(c.failures_total),
    );
    kv(
        &mut l2,
        "resets",
        fmt::count(c.resets_total),
        warn(c.resets_total),
    );
    kv(
        &mut l2,
        "retransmissions",
        format!(
            "{} ({}/s)",
            fmt::count(c.retransmitted_total),
            fmt::rate(c.retransmitted_rate)
        ),
        bold(),
    );

    let mut l3 = Vec::new();
    kv(&mut l3, "established", fmt::count(c.established), bold());
    kv(&mut l3, "time-wait", fmt::count(c.time_wait), bold());
    kv(&mut l3, "half-open", fmt::count(c.half_open), bold());
    kv(&mut l3, "tracked", fmt::count(c.tracked), bold());

    let p = Paragraph::new(vec![Line::from(l1), Line::from(l2), Line::from(l3)])
        .block(section(vec![Span::raw("Connections")]));
    frame.render_widget(p, area);
}

fn draw_footer(frame: &mut Frame, area: Rect, snap: &TopSnapshot) {
    let keys = Line::from(vec![
        Span::styled(" q", bold().add_modifier(Modifier::REVERSED)),
        Span::raw(" quit"),
    ]);
    let mut used = keys.width();
    if snap.syn.unix_ms != 0 {
        let when = Line::from(Span::styled(
            format!("snapshot {} ", fmt::utc_time_of_day(snap.syn.unix_ms)),
            dim(),
        ))
        .alignment(Alignment::Right);
        used += when.width();
        frame.render_widget(Paragraph::new(when), area);
    }
    // Between the two, where it fits with a gap on each side.
    if let Some(cost) = cost_line(&snap.cost)
        && used + cost.chars().count() + 4 <= usize::from(area.width)
    {
        let line = Line::from(Span::styled(cost, dim())).alignment(Alignment::Center);
        frame.render_widget(Paragraph::new(line), area);
    }
    frame.render_widget(Paragraph::new(keys), area);
}

/// What the monitor costs, in a line; None from an agent that does not say.
fn cost_line(c: &CostSummary) -> Option<String> {
    if c.agent_cpu_seconds_total <= 0.0 {
        return None;
    }
    let kernel = match (c.bpf_stats_enabled, c.kernel_ns_per_run) {
        (_, Some(ns)) => format!("kernel {ns:.0} ns/pkt, {} CPU", fmt::percent(c.kernel_cpus)),
        (Some(true), None) => "kernel: no packets".to_string(),
        (Some(false), None) => "kernel: bpf_stats off".to_string(),
        (None, None) => "kernel: no bpf_stats".to_string(),
    };
    Some(format!(
        "{kernel} · agent {} CPU",
        fmt::percent(c.agent_cpus)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_fairly() {
        assert_eq!(split_rows(13, 3, 4), (3, 4));
        assert_eq!(split_rows(13, 20, 2), (11, 2));
        assert_eq!(split_rows(13, 2, 20), (2, 11));
        assert_eq!(split_rows(13, 20, 20), (7, 6));
        assert_eq!(split_rows(0, 5, 5), (0, 0));
    }

    #[test]
    fn bars() {
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██");
        assert_eq!(bar(0.0, 4), "");
        assert_eq!(bar(1.0 / 32.0, 4), "▏");
        assert_eq!(bar(f64::NAN, 4), "");
        assert_eq!(bar(7.0, 2), "██");
    }

    #[test]
    fn ports_order_flood_then_rate() {
        let p = |port: &str, flood: bool, syn_rate: f64| PortSyn {
            port: port.into(),
            flood,
            syn_rate,
            ..Default::default()
        };
        let ports = [
            p("other", false, 5.0),
            p("80", false, 900.0),
            p("22", true, 10.0),
            p("443", true, 40_000.0),
            p("8080", false, 5.0),
        ];
        let order: Vec<&str> = sorted_ports(&ports)
            .iter()
            .map(|p| p.port.as_str())
            .collect();
        assert_eq!(order, ["443", "22", "80", "8080", "other"]);
    }
}
