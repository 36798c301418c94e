package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// table is the result of one workload: hit ratios by policy and size.
type table struct {
	w        workload
	summary  string // accesses and keys
	policies []string
	sizes    []int
	ratio    map[cell]float64
}

func (t *table) mean(p string) float64 {
	var sum float64
	for _, s := range t.sizes {
		sum += t.ratio[cell{p, s}]
	}
	return sum / float64(len(t.sizes))
}

// write prints t as aligned text, or as a Markdown table if md is set.
func (t *table) write(out io.Writer, md bool) {
	header := []string{"policy"}
	for _, s := range t.sizes {
		header = append(header, strconv.Itoa(s))
	}
	header = append(header, "mean")
	rows := [][]string{header}
	for _, p := range t.policies {
		row := []string{p}
		for _, s := range t.sizes {
			row = append(row, fmt.Sprintf("%.2f", t.ratio[cell{p, s}]))
		}
		rows = append(rows, append(row, fmt.Sprintf("%.2f", t.mean(p))))
	}

	if md {
		fmt.Fprintf(out, "### %s\n\n%s; %s. Hit ratio in %% by cache size in entries.\n\n", t.w.name, t.w.desc, t.summary)
		for i, row := range rows {
			fmt.Fprintf(out, "| %s |\n", strings.Join(row, " | "))
			if i == 0 {
				fmt.Fprintf(out, "|---|%s\n", strings.Repeat("---:|", len(row)-1))
			}
		}
		fmt.Fprintln(out)
		return
	}
	fmt.Fprintf(out, "%s: %s; %s. Hit ratio %% by cache size (entries):\n", t.w.name, t.w.desc, t.summary)
	// Padding the first column to one width makes it read left-aligned
	// while the numbers stay right-aligned.
	w := 0
	for _, row := range rows {
		w = max(w, len(row[0]))
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, row := range rows {
		row[0] = fmt.Sprintf("%-*s", w, row[0])
		fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
	}
	tw.Flush()
	fmt.Fprintln(out)
}

// plotPath returns where the plot of name goes: path itself if there is
// only one plot, else path with "-name" before its extension.
func plotPath(path, name string, only bool) string {
	if only {
		return path
	}
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + "-" + name + ext
}

// plot writes t as a PNG: hit ratio against cache size on a log axis, one
// line per policy, with the legend to the right of the axes so that it
// never hides a line.
func (t *table) plot(path string) error {
	p := plot.New()
	p.Title.Text = t.w.name + ": " + t.w.desc
	p.X.Label.Text = "cache size (entries, log scale)"
	p.Y.Label.Text = "hit ratio (%)"
	p.X.Scale = plot.LogScale{}
	// Label exactly the simulated sizes; LogTicks would label only powers
	// of ten, which leaves 250..2000 with a single label.
	var ticks []plot.Tick
	for _, s := range t.sizes {
		ticks = append(ticks, plot.Tick{Value: float64(s), Label: strconv.Itoa(s)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Y.Tick.Marker = percentTicks{}
	p.Y.Min = 0
	p.Add(plotter.NewGrid())

	legend := plot.NewLegend()
	legend.Top = true
	for i, name := range t.policies {
		xys := make(plotter.XYs, len(t.sizes))
		for j, s := range t.sizes {
			xys[j] = plotter.XY{X: float64(s), Y: t.ratio[cell{name, s}]}
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		line.Color = palette[i%len(palette)]
		line.Dashes = plotutil.Dashes(i / len(palette))
		points.Color = line.Color
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		legend.Add(name, line, points)
	}

	const width, height = 10 * vg.Inch, 6 * vg.Inch
	img := vgimg.New(width, height)
	dc := draw.New(img)
	legendWidth := legend.Rectangle(dc).Size().X + vg.Points(12)
	p.Draw(draw.Crop(dc, 0, -legendWidth, 0, 0))
	legend.Draw(draw.Crop(dc, width-legendWidth+vg.Points(6), -vg.Points(6), 0, -vg.Points(24)))

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return f.Close()
}

// percentTicks labels every 10 % (every 5 % on short ranges), finer than
// the default ticker, which labels OLTP's 0..60 only at 0, 30 and 60.
type percentTicks struct{}

func (percentTicks) Ticks(min, max float64) []plot.Tick {
	step := 10.0
	if max-min <= 30 {
		step = 5
	}
	var ticks []plot.Tick
	for v := math.Ceil(min/step) * step; v <= max; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
	}
	return ticks
}

// palette has enough distinct colours for the registered policies;
// plotutil's defaults repeat after seven.
var palette = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff},
	color.RGBA{0x94, 0x67, 0xbd, 0xff}, color.RGBA{0x8c, 0x56, 0x4b, 0xff},
	color.RGBA{0xe3, 0x77, 0xc2, 0xff}, color.RGBA{0x7f, 0x7f, 0x7f, 0xff},
	color.RGBA{0xbc, 0xbd, 0x22, 0xff}, color.RGBA{0x17, 0xbe, 0xcf, 0xff},
}
