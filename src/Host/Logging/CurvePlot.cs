using System.Text.Json.Nodes;
using ScottPlot;

namespace OrtFinetune.Host.Logging;

/// <summary>
/// The run's curves as a PNG (ScottPlot), drawn from metrics.jsonl so that a resumed run shows all of
/// it: training loss per logged step and validation loss per epoch on the left axis; training,
/// validation and test accuracy on the right axis (0 to 1). A step logged twice (the steps replayed after
/// a resume) keeps its last value.
/// </summary>
public static class CurvePlot
{
    public const int Width = 1000, Height = 600;

    /// <summary>Draws <paramref name="metricsJsonl"/> into <paramref name="png"/>.</summary>
    public static void Write(string metricsJsonl, string png, string title)
    {
        var series = new Dictionary<string, SortedDictionary<long, double>>();
        foreach (var line in File.ReadLines(metricsJsonl))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonObject record;
            try { record = JsonNode.Parse(line) as JsonObject ?? throw new FormatException(); }
            catch (Exception e) when (e is System.Text.Json.JsonException or FormatException) { continue; }   // a line cut by a crash
            long step = MetricRecord.Step(record);
            foreach (var (key, value) in MetricRecord.Scalars(record))
            {
                if (!double.IsFinite(value)) continue;
                if (!series.TryGetValue(key, out var points)) series[key] = points = new();
                points[step] = value;
            }
        }

        var plot = new Plot();
        plot.Title(title, 15);
        plot.XLabel("optimizer step", 13);
        plot.YLabel("loss (cross-entropy)", 13);
        plot.Axes.Right.Label.Text = "accuracy";
        plot.Axes.Right.Label.FontSize = 13;
        var right = plot.Axes.Right;
        bool any = false;
        void Add(string key, string legend, Color color, bool accuracy, bool markersOnly = false)
        {
            if (!series.TryGetValue(key, out var points) || points.Count == 0) return;
            var xs = points.Keys.Select(k => (double)k).ToArray();
            var ys = points.Values.ToArray();
            var sc = plot.Add.Scatter(xs, ys, color);
            sc.LegendText = legend;
            sc.LineWidth = markersOnly ? 0 : 2;
            sc.MarkerSize = markersOnly || xs.Length < 3 ? 9 : (key.StartsWith("val_") ? 6 : 0);
            if (accuracy) sc.Axes.YAxis = right;
            any = true;
        }
        Add("loss", "training loss", Colors.SteelBlue, false);
        Add("val_loss", "validation loss", Colors.Navy, false);
        Add("train_accuracy", "training accuracy", Colors.Orange, true);
        Add("val_accuracy", "validation accuracy", Colors.OrangeRed, true);
        Add("test_accuracy", "test accuracy", Colors.Green, true, markersOnly: true);
        if (!any) plot.Add.Annotation("no metrics were logged");
        plot.Axes.SetLimitsY(0, 1, right);
        plot.ShowLegend(Alignment.UpperCenter);
        plot.SavePng(png, Width, Height);
    }
}
