using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Training.Tests.Runtime;

public class ScheduleTests
{
    [Fact]
    public void CosineWithWarmup()
    {
        var s = Schedules.Create("cosine", 1.0, total: 110, warmup: 10, minLr: 0.1);
        Assert.Equal(0.1, s.At(0), 12);
        Assert.Equal(1.0, s.At(9), 12);
        Assert.Equal(1.0, s.At(10), 12);
        Assert.Equal(0.55, s.At(60), 12);          // half-way: min + (base-min)/2
        Assert.Equal(0.1, s.At(110), 12);
        Assert.Equal(0.1, s.At(500), 12);          // stays at the floor
    }

    [Fact]
    public void LinearStepAndConstant()
    {
        Assert.Equal(0.5, Schedules.Create("linear", 1.0, total: 100).At(50), 12);
        var st = Schedules.Create("step", 1.0, total: 0, stepSize: 30, gamma: 0.1);
        Assert.Equal(1.0, st.At(29), 12);
        Assert.Equal(0.1, st.At(30), 12);
        Assert.Equal(0.01, st.At(65), 12);
        Assert.Equal(0.3, Schedules.Create("constant", 0.3, total: 0).At(1000), 12);
    }

    [Theory]
    [InlineData("exponential", "not known")]
    [InlineData("cosine", "needs the total")]
    public void BadSchedulesAreClearErrors(string name, string message) =>
        Assert.Contains(message, Assert.Throws<TrainingException>(() => Schedules.Create(name, 1.0, total: 0)).Message);
}
