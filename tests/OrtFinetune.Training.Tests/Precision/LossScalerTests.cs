using OrtFinetune.Abstractions;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Training.Tests.Precision;

public class LossScalerTests
{
    [Fact]
    public void StartsAt65536AndHalvesOnOverflow()
    {
        var s = new LossScaler();
        Assert.Equal(65536f, s.Scale);
        s.Update(allFinite: false);
        Assert.Equal(32768f, s.Scale);
        Assert.Equal(1, s.SkippedSteps);
    }

    [Fact]
    public void DoublesAfterTheGrowthIntervalAndAnOverflowResetsTheCount()
    {
        var s = new LossScaler(new LossScalerSettings { GrowthInterval = 2000 });
        for (int i = 0; i < 1999; i++) s.Update(true);
        Assert.Equal(65536f, s.Scale);
        s.Update(true);
        Assert.Equal(131072f, s.Scale);
        for (int i = 0; i < 1500; i++) s.Update(true);
        s.Update(false);
        Assert.Equal(65536f, s.Scale);
        for (int i = 0; i < 1999; i++) s.Update(true);
        Assert.Equal(65536f, s.Scale);
        s.Update(true);
        Assert.Equal(131072f, s.Scale);
    }

    [Fact]
    public void StateRoundTripsThroughStrings()
    {
        var s = new LossScaler(new LossScalerSettings { GrowthInterval = 10 });
        for (int i = 0; i < 7; i++) s.Update(true);
        s.Update(false);
        s.Update(true); s.Update(true);
        var copy = new LossScaler(new LossScalerSettings { GrowthInterval = 10 });
        copy.Load(s.State());
        Assert.Equal((s.Scale, s.GrowthTracker, s.SkippedSteps), (copy.Scale, copy.GrowthTracker, copy.SkippedSteps));
        Assert.Throws<CheckpointException>(() => copy.Load(new Dictionary<string, string>()));
    }

    [Fact]
    public void AScaleCollapsingBelowTheFloorStopsTheRun()
    {
        var s = new LossScaler(new LossScalerSettings { InitScale = 4, MinScale = 1 });
        s.Update(false); s.Update(false);
        Assert.Equal(1f, s.Scale);
        var e = Assert.Throws<TrainingException>(() => s.Update(false));
        Assert.Contains("fell below", e.Message);
    }

    [Fact]
    public void InvalidSettingsAreRefused()
    {
        Assert.Throws<PrecisionException>(() => new LossScaler(new LossScalerSettings { BackoffFactor = 1.5 }));
        Assert.Throws<PrecisionException>(() => new LossScaler(new LossScalerSettings { GrowthInterval = 0 }));
    }
}
