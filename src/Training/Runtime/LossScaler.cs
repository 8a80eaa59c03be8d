using System.Globalization;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// Dynamic loss scaling with torch.amp.GradScaler's semantics. The trainer seeds backward with
/// <see cref="Scale"/> (the training model's loss_scale input) and divides the gradients by it in the
/// optimizer graph, which also checks them for inf/NaN on the device and skips a non-finite update;
/// <see cref="Update"/> then backs off (x0.5) after a skipped step, or grows (x2) after
/// <c>GrowthInterval</c> consecutive finite ones. State goes into checkpoints as strings.
/// </summary>
public sealed class LossScaler
{
    public const string ScaleKey = "scaler.scale", GrowthTrackerKey = "scaler.growth_tracker", SkippedKey = "scaler.skipped_steps";

    public LossScalerSettings Settings { get; }
    public float Scale { get; private set; }
    /// <summary>Consecutive finite steps since the last growth or back-off.</summary>
    public int GrowthTracker { get; private set; }
    /// <summary>Updates skipped because a gradient was not finite.</summary>
    public long SkippedSteps { get; private set; }

    public LossScaler(LossScalerSettings? settings = null)
    {
        Settings = settings ?? new LossScalerSettings();
        Settings.Validate();
        Scale = (float)Settings.InitScale;
    }

    /// <summary>
    /// Records the outcome of one optimizer step. A scale that would fall below the minimum stops the
    /// run: gradients are not finite even at a tiny scale, so the model itself produces inf/NaN.
    /// </summary>
    public void Update(bool allFinite)
    {
        if (allFinite)
        {
            if (++GrowthTracker >= Settings.GrowthInterval)
            {
                Scale = (float)Math.Min(Scale * Settings.GrowthFactor, Settings.MaxScale);
                GrowthTracker = 0;
            }
            return;
        }
        SkippedSteps++;
        GrowthTracker = 0;
        var next = Scale * Settings.BackoffFactor;
        if (next < Settings.MinScale)
            throw new TrainingException($"the loss scale fell below {Settings.MinScale:G3} after {SkippedSteps} skipped steps: gradients are not finite even at a tiny scale, so the model produces inf/NaN (lower the learning rate, or use bf16 or 32-bit precision)");
        Scale = (float)next;
    }

    public IReadOnlyDictionary<string, string> State() => new Dictionary<string, string>
    {
        [ScaleKey] = Scale.ToString("R", CultureInfo.InvariantCulture),
        [GrowthTrackerKey] = GrowthTracker.ToString(CultureInfo.InvariantCulture),
        [SkippedKey] = SkippedSteps.ToString(CultureInfo.InvariantCulture),
    };

    /// <summary>Restores <see cref="State"/> (e.g. the extra entries of a checkpoint); entries of other components are ignored.</summary>
    public void Load(IReadOnlyDictionary<string, string> state)
    {
        if (!state.TryGetValue(ScaleKey, out var s))
            throw new CheckpointException($"the checkpoint has no loss-scaler state ('{ScaleKey}'); it was written without loss scaling");
        if (!float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var scale) || !(scale > 0) || float.IsInfinity(scale))
            throw new CheckpointException($"loss-scaler state '{ScaleKey}' = '{s}' is not a positive number");
        Scale = scale;
        GrowthTracker = state.TryGetValue(GrowthTrackerKey, out var g) ? int.Parse(g, CultureInfo.InvariantCulture) : 0;
        SkippedSteps = state.TryGetValue(SkippedKey, out var k) ? long.Parse(k, CultureInfo.InvariantCulture) : 0;
    }
}
