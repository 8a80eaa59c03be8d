using System.Text.Json;
using System.Text.Json.Nodes;
using OrtFinetune.Host.Logging;

namespace OrtFinetune.Host.Training;

/// <summary>
/// A run's folder: settings.json, metrics.jsonl (one line per logged step, per evaluation and, at the end,
/// the test), metrics.csv (the same records in Lightning's CSVLogger layout), tb/ (TensorBoard event
/// files), curves.png, summary.json, checkpoints/last.ckpt, model.onnx (the exported inference model).
/// </summary>
public sealed class RunFolder : IDisposable
{
    public string Path { get; }
    readonly List<IMetricsLogger> _loggers = new();
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public RunFolder(string path, bool append)
    {
        Path = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(Path);
        Directory.CreateDirectory(CheckpointDir);
        try
        {
            _loggers.Add(new JsonlMetricsLogger(MetricsJsonl, append));
            _loggers.Add(new CsvMetricsLogger(MetricsCsv, append));
            _loggers.Add(new TensorBoardLogger(TensorBoardDir));
        }
        catch { Dispose(); throw; }
    }

    public string CheckpointDir => System.IO.Path.Combine(Path, "checkpoints");
    public string LastCheckpoint => System.IO.Path.Combine(CheckpointDir, "last.ckpt");
    public string ExportedModel => System.IO.Path.Combine(Path, "model.onnx");
    public string MetricsJsonl => System.IO.Path.Combine(Path, "metrics.jsonl");
    public string MetricsCsv => System.IO.Path.Combine(Path, "metrics.csv");
    public string TensorBoardDir => System.IO.Path.Combine(Path, "tb");
    public string CurvesPng => System.IO.Path.Combine(Path, "curves.png");

    /// <summary>The run's loggers: metrics.jsonl, metrics.csv, TensorBoard.</summary>
    public IReadOnlyList<IMetricsLogger> Loggers => _loggers;

    /// <summary>One record of the training loop (a logged step, an epoch's validation) to every logger.</summary>
    public void Metric(JsonObject line)
    {
        foreach (var l in _loggers) l.Log(line);
    }

    /// <summary>
    /// The end of a completed run: the test metrics of <paramref name="summary"/> (test_loss, test_accuracy,
    /// test_top5) go to every logger as a last record at the final step, summary.json is written, the
    /// loggers are closed and curves.png is drawn from metrics.jsonl. Returns the PNG's path, or null
    /// (with a warning on stderr) when it could not be drawn: the run itself has succeeded.
    /// </summary>
    public string? Finish(JsonObject summary)
    {
        var test = new JsonObject { ["step"] = summary["steps"]?.DeepClone(), ["epoch"] = summary["epochs"]?.DeepClone() };
        foreach (var key in (string[])["test_loss", "test_accuracy", "test_top5"])
            if (summary.ContainsKey(key)) test[key] = summary[key]?.DeepClone();
        Metric(test);
        WriteJson("summary.json", summary);
        CloseLoggers();
        try
        {
            var title = string.Join(", ", ((string[])["model", "dataset", "precision"]).Select(k => summary[k]?.ToString()).Where(v => !string.IsNullOrEmpty(v)));
            CurvePlot.Write(MetricsJsonl, CurvesPng, title);
            return CurvesPng;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"warning: could not draw {CurvesPng}: {e.Message}");
            return null;
        }
    }

    /// <summary>Writes a JSON file atomically (temp file + rename).</summary>
    public void WriteJson(string name, object value)
    {
        var target = System.IO.Path.Combine(Path, name);
        var tmp = target + ".tmp";
        File.WriteAllText(tmp, value is JsonNode n ? n.ToJsonString(Indented) : JsonSerializer.Serialize(value, Indented));
        File.Move(tmp, target, true);
    }

    void CloseLoggers()
    {
        foreach (var l in _loggers) l.Dispose();
        _loggers.Clear();
    }

    public void Dispose() => CloseLoggers();
}
