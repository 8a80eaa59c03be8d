using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtFinetune.Host.Training;

/// <summary>
/// A run's folder: settings.json, metrics.jsonl (one line per logged step and per evaluation),
/// summary.json, checkpoints/last.ckpt, model.onnx (the exported inference model).
/// </summary>
public sealed class RunFolder : IDisposable
{
    public string Path { get; }
    readonly StreamWriter _metrics;
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public RunFolder(string path, bool append)
    {
        Path = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(Path);
        Directory.CreateDirectory(CheckpointDir);
        _metrics = new StreamWriter(new FileStream(System.IO.Path.Combine(Path, "metrics.jsonl"), append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
    }

    public string CheckpointDir => System.IO.Path.Combine(Path, "checkpoints");
    public string LastCheckpoint => System.IO.Path.Combine(CheckpointDir, "last.ckpt");
    public string ExportedModel => System.IO.Path.Combine(Path, "model.onnx");

    public void Metric(JsonObject line) => _metrics.WriteLine(line.ToJsonString());

    /// <summary>Writes a JSON file atomically (temp file + rename).</summary>
    public void WriteJson(string name, object value)
    {
        var target = System.IO.Path.Combine(Path, name);
        var tmp = target + ".tmp";
        File.WriteAllText(tmp, value is JsonNode n ? n.ToJsonString(Indented) : JsonSerializer.Serialize(value, Indented));
        File.Move(tmp, target, true);
    }

    public void Dispose() => _metrics.Dispose();
}
