using System.Text.Json.Nodes;

namespace OrtFinetune.Host.Logging;

/// <summary>
/// A destination of the training loop's metrics (<see cref="Training.RunFolder.Metric"/> hands every
/// record to each logger of the run): metrics.jsonl, metrics.csv and TensorBoard event files.
/// </summary>
/// <remarks>
/// A record is one JSON object: <c>"step"</c> (the optimizer step, the x axis), usually <c>"epoch"</c>, and
/// named values, numbers or <c>null</c> where a value is not a number (a diverged loss, an empty split).
/// Per-step records carry loss, lr, grad_norm, train_accuracy, samples_per_second (and loss_scale under a
/// loss scaler); per-epoch records val_loss, val_accuracy, val_top5; the last record of a completed run
/// test_loss, test_accuracy, test_top5. A logger writes each record through before <see cref="Log"/>
/// returns, so an interrupted or crashed run keeps what was logged; <see cref="IDisposable.Dispose"/>
/// never throws (it runs while another failure, e.g. a full disk, is being reported).
/// </remarks>
public interface IMetricsLogger : IDisposable
{
    /// <summary>Writes one record.</summary>
    void Log(JsonObject record);
}

/// <summary>Reading a record's values the same way in every logger.</summary>
public static class MetricRecord
{
    /// <summary>The record's step, or 0 when it has none.</summary>
    public static long Step(JsonObject record) =>
        record["step"] is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number ? (long)Number(v) : 0;

    /// <summary>The numeric values of the record except "step", in the record's order (nulls and non-numbers left out).</summary>
    public static IEnumerable<(string Key, double Value)> Scalars(JsonObject record)
    {
        foreach (var (k, v) in record)
            if (k != "step" && v is JsonValue jv && jv.GetValueKind() == System.Text.Json.JsonValueKind.Number)
                yield return (k, Number(jv));
    }

    /// <summary>A JSON number as a double (from its JSON text, whatever CLR type the node holds).</summary>
    public static double Number(JsonNode node) => double.Parse(node.ToJsonString(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture);
}
