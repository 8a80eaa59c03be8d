using System.Text.Json.Nodes;

namespace OrtFinetune.Host.Logging;

/// <summary>metrics.jsonl: one JSON object per line, as the loop logged it.</summary>
public sealed class JsonlMetricsLogger : IMetricsLogger
{
    readonly StreamWriter _writer;
    public string FilePath { get; }

    /// <param name="path">The file.</param>
    /// <param name="append">Continue an existing file (a resumed run) instead of starting a new one.</param>
    public JsonlMetricsLogger(string path, bool append)
    {
        FilePath = path;
        _writer = new StreamWriter(new FileStream(path, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
    }

    public void Log(JsonObject record) => _writer.WriteLine(record.ToJsonString());

    public void Dispose()
    {
        try { _writer.Dispose(); } catch (IOException) { }
    }
}
